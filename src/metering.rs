//! What an answer of X bills (issue "costs", CONTRACT section 11): the resources of its
//! top-level `data` and their ids, counted as the body streams by.
//!
//! [`Scanner`] is fed the body's chunks as they are relayed. It keeps no copy of the body and
//! does not parse it into values: a byte-level state machine follows the nesting, and only
//! the pieces that matter are decoded — the keys of the top-level object and of each
//! resource, and each resource's `id`. `data` that is an array costs one resource per element,
//! an object costs one, anything else (or no `data`) none. A body holding several JSON values
//! one after another (a stream's messages) adds up their resources. Chunk boundaries may fall
//! anywhere, inside strings and escapes included. When a document holds `data` twice, or a
//! resource `id` twice, the last one counts, as in `serde_json`.
//!
//! Bounds: nesting is followed exactly to any depth (levels past [`MAX_TRACKED_DEPTH`] are only
//! counted, and nothing there is billed); an `id` longer than [`MAX_ID_BYTES`] is not kept, and
//! past [`MAX_IDS`] ids per body no more are kept (the resources are still counted: a
//! resource without its id is billed as new, never dropped). Input that is not JSON is
//! scanned without error or panic; what it counts is then unspecified.

use std::fmt;

/// Levels of nesting whose role is tracked: a document's top-level object, the array `data`
/// is and a resource in it. Every other container is only counted through (nothing in it is
/// billed), so the tracked levels live in a fixed array: no allocation per body.
pub const MAX_TRACKED_DEPTH: usize = 3;

/// The longest `id` kept (X's ids are at most 19 digits).
pub const MAX_ID_BYTES: usize = 64;

/// The most ids kept per body.
pub const MAX_IDS: usize = 100_000;

/// Whether `b` matters inside a container nothing in is billed: a string's start, a bracket.
const fn structural(b: u8) -> bool {
    matches!(b, b'"' | b'{' | b'}' | b'[' | b']')
}

/// The longest key decoded: only `data` and `id` matter.
const MAX_KEY_BYTES: usize = 4;

/// What a level of nesting is, for billing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The top-level object of a document: its `data` is billed.
    Top,
    /// The array that `data` is: each element is a resource.
    DataArray,
    /// A resource object: its `id` is kept.
    Resource,
    /// Anything else.
    Other,
}

/// The key last read at an object level, as far as billing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Data,
    Id,
    Other,
}

#[derive(Debug, Clone, Copy)]
struct Level {
    array: bool,
    role: Role,
    /// In an object: the next string is a key.
    expect_key: bool,
    key: Key,
    /// A resource whose `id` is the last one kept (a later `id` key replaces it).
    id_kept: bool,
}

/// The tracked levels, innermost last.
#[derive(Debug, Clone, Copy)]
struct Stack {
    levels: [Level; MAX_TRACKED_DEPTH],
    len: usize,
}

impl Default for Stack {
    fn default() -> Self {
        let level = Level {
            array: false,
            role: Role::Other,
            expect_key: false,
            key: Key::Other,
            id_kept: false,
        };
        Self {
            levels: [level; MAX_TRACKED_DEPTH],
            len: 0,
        }
    }
}

impl Stack {
    fn len(&self) -> usize {
        self.len
    }

    fn last(&self) -> Option<&Level> {
        self.len.checked_sub(1).and_then(|i| self.levels.get(i))
    }

    fn last_mut(&mut self) -> Option<&mut Level> {
        self.len.checked_sub(1).and_then(|i| self.levels.get_mut(i))
    }

    /// Pushes `level`; `false` when full (the caller checks the depth first).
    fn push(&mut self, level: Level) -> bool {
        match self.levels.get_mut(self.len) {
            Some(slot) => {
                *slot = level;
                self.len += 1;
                true
            }
            None => false,
        }
    }

    fn pop(&mut self) {
        self.len = self.len.saturating_sub(1);
    }
}

/// The decoded bytes of a captured string (a key, or an id of at most [`MAX_ID_BYTES`]).
#[derive(Debug, Clone, Copy)]
struct Buf {
    bytes: [u8; MAX_ID_BYTES],
    len: usize,
}

impl Default for Buf {
    fn default() -> Self {
        Self {
            bytes: [0; MAX_ID_BYTES],
            len: 0,
        }
    }
}

impl Buf {
    fn len(&self) -> usize {
        self.len
    }

    fn clear(&mut self) {
        self.len = 0;
    }

    /// Appends `more`; the caller keeps the total within [`MAX_ID_BYTES`].
    fn extend(&mut self, more: &[u8]) {
        if let Some(dst) = self.bytes.get_mut(self.len..self.len + more.len()) {
            dst.copy_from_slice(more);
            self.len += more.len();
        }
    }

    fn as_slice(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }
}

/// What a string being read is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Capture {
    /// Skipped.
    Skip,
    /// A key at a level whose keys matter.
    Key,
    /// A resource's `id`.
    Id,
}

/// Where the lexer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lex {
    /// Between tokens.
    Between,
    /// Inside a string; `escaped` after a backslash.
    Str { capture: Capture, escaped: bool },
    /// Inside `\uXXXX` of a captured string: the digits read so far and their value.
    Unicode {
        capture: Capture,
        digits: u8,
        unit: u16,
    },
    /// Inside a number, `true`, `false` or `null`.
    Scalar,
}

/// The resources and ids of one answer, counted as its body streams by.
#[derive(Clone)]
pub struct Scanner {
    lex: Lex,
    stack: Stack,
    /// Levels past [`MAX_TRACKED_DEPTH`].
    untracked: usize,
    resources: u64,
    /// Resources and ids before the current document (a repeated `data` rolls back to it).
    doc_resources: u64,
    doc_ids: usize,
    /// The ids kept, back to back, and where each ends.
    id_bytes: String,
    id_ends: Vec<usize>,
    /// The string being captured (a key or an id), decoded.
    buf: Buf,
    /// `buf` grew past what its capture may hold, or held an escape it cannot decode.
    spoiled: bool,
    /// A high surrogate waiting for its low half.
    high: Option<u16>,
    ids_dropped: u64,
}

impl fmt::Debug for Scanner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scanner")
            .field("resources", &self.resources)
            .field("ids", &self.id_ends.len())
            .field("ids_dropped", &self.ids_dropped)
            .finish_non_exhaustive()
    }
}

impl Default for Scanner {
    fn default() -> Self {
        Self::new()
    }
}

impl Scanner {
    /// A scanner at the start of a body.
    pub fn new() -> Self {
        Self {
            lex: Lex::Between,
            stack: Stack::default(),
            untracked: 0,
            resources: 0,
            doc_resources: 0,
            doc_ids: 0,
            id_bytes: String::new(),
            id_ends: Vec::new(),
            buf: Buf::default(),
            spoiled: false,
            high: None,
            ids_dropped: 0,
        }
    }

    /// The resources counted so far.
    pub fn resources(&self) -> u64 {
        self.resources
    }

    /// The ids of the resources counted so far, in order (those kept: see the module's
    /// bounds).
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        let mut start = 0;
        self.id_ends.iter().map(move |&end| {
            let id = self.id_bytes.get(start..end).unwrap_or_default();
            start = end;
            id
        })
    }

    /// Forgets the ids kept so far (they were settled: a stream's messages); the resources
    /// counted stay counted.
    pub fn clear_ids(&mut self) {
        self.id_bytes.clear();
        self.id_ends.clear();
        self.doc_ids = 0;
    }

    /// Resources whose id was not kept (too long, or past [`MAX_IDS`]).
    pub fn ids_dropped(&self) -> u64 {
        self.ids_dropped
    }

    /// Reads the next chunk of the body.
    pub fn feed(&mut self, chunk: &[u8]) {
        let mut rest = chunk;
        while let Some((&b, tail)) = rest.split_first() {
            // Most of a body is the inside of strings nobody bills (texts, URLs): skip to the
            // next quote or backslash at once instead of a byte at a time.
            if let Lex::Str {
                capture: Capture::Skip,
                escaped: false,
            } = self.lex
            {
                match memchr::memchr2(b'"', b'\\', rest) {
                    Some(at) => {
                        let (_skipped, from) = rest.split_at(at);
                        rest = from;
                        if let Some((&b, tail)) = rest.split_first() {
                            self.byte(b);
                            rest = tail;
                        }
                        continue;
                    }
                    None => return,
                }
            }
            // A key or an id read whole from this chunk when it holds the string's end and no
            // escape: one search, one copy, instead of a byte at a time.
            if let Lex::Str {
                capture: capture @ (Capture::Key | Capture::Id),
                escaped: false,
            } = self.lex
            {
                if self.buf.len() == 0 && !self.spoiled && self.high.is_none() {
                    if let Some(at) = memchr::memchr2(b'"', b'\\', rest) {
                        let (text, from) = rest.split_at(at);
                        if let Some((&b'"', after)) = from.split_first() {
                            self.push_decoded(capture, text);
                            self.lex = Lex::Between;
                            self.string_ends(capture);
                            rest = after;
                            continue;
                        }
                    }
                }
            }
            // Inside a container nothing in is billed (`entities`, `public_metrics`,
            // `includes`, `meta`): only strings and brackets matter, so skip to the next one.
            if self.untracked > 0 && self.lex == Lex::Between && !structural(b) {
                match rest.iter().position(|&c| structural(c)) {
                    Some(at) => {
                        let (_skipped, from) = rest.split_at(at);
                        rest = from;
                        continue;
                    }
                    None => return,
                }
            }
            self.byte(b);
            rest = tail;
        }
    }

    fn byte(&mut self, b: u8) {
        match self.lex {
            Lex::Str { capture, escaped } => self.in_string(capture, escaped, b),
            Lex::Unicode {
                capture,
                digits,
                unit,
            } => self.in_unicode(capture, digits, unit, b),
            Lex::Scalar => {
                if matches!(b, b',' | b'}' | b']' | b':' | b' ' | b'\t' | b'\n' | b'\r') {
                    self.lex = Lex::Between;
                    self.between(b);
                }
            }
            Lex::Between => self.between(b),
        }
    }

    fn between(&mut self, b: u8) {
        match b {
            b'{' | b'[' => {
                let role = self.value_starts(Some(b == b'['));
                self.open(b == b'[', role);
            }
            b'}' | b']' => self.close(),
            b'"' => {
                let capture = match self.stack.last() {
                    Some(l) if self.untracked == 0 && !l.array && l.expect_key => {
                        if matches!(l.role, Role::Top | Role::Resource) {
                            Capture::Key
                        } else {
                            Capture::Skip
                        }
                    }
                    _ => {
                        let id = self.untracked == 0
                            && self
                                .stack
                                .last()
                                .is_some_and(|l| l.role == Role::Resource && l.key == Key::Id);
                        self.value_starts(None);
                        if id { Capture::Id } else { Capture::Skip }
                    }
                };
                if capture != Capture::Skip {
                    self.buf.clear();
                    self.spoiled = false;
                    self.high = None;
                }
                self.lex = Lex::Str {
                    capture,
                    escaped: false,
                };
            }
            b':' => {
                if let Some(l) = self.tracked_top() {
                    l.expect_key = false;
                }
            }
            b',' => {
                if let Some(l) = self.tracked_top() {
                    if !l.array {
                        l.expect_key = true;
                        l.key = Key::Other;
                    }
                }
            }
            b' ' | b'\t' | b'\n' | b'\r' => {}
            _ => {
                self.value_starts(None);
                self.lex = Lex::Scalar;
            }
        }
    }

    /// The innermost level, when it is tracked.
    fn tracked_top(&mut self) -> Option<&mut Level> {
        if self.untracked > 0 {
            None
        } else {
            self.stack.last_mut()
        }
    }

    /// A value begins at the current level (`container`: `Some(is_array)` for `[` and `{`):
    /// counts it when it is a resource; returns the role of the level it opens.
    fn value_starts(&mut self, container: Option<bool>) -> Role {
        if self.untracked > 0 {
            return Role::Other;
        }
        let Some(parent) = self.stack.last().copied() else {
            // A new document.
            self.doc_resources = self.resources;
            self.doc_ids = self.id_ends.len();
            return if container == Some(false) {
                Role::Top
            } else {
                Role::Other
            };
        };
        if parent.role == Role::Resource && parent.key == Key::Id && parent.id_kept {
            // `id` again in this resource: the last one counts.
            self.id_ends.pop();
            self.id_bytes
                .truncate(self.id_ends.last().copied().unwrap_or(0));
            if let Some(l) = self.stack.last_mut() {
                l.id_kept = false;
            }
        }
        if parent.array {
            return if parent.role == Role::DataArray {
                self.resources += 1;
                if container == Some(false) {
                    Role::Resource
                } else {
                    Role::Other
                }
            } else {
                Role::Other
            };
        }
        if parent.role == Role::Top && parent.key == Key::Data {
            // `data` again in this document: the last one counts.
            self.resources = self.doc_resources;
            self.id_bytes.truncate(
                self.id_ends
                    .get(self.doc_ids.wrapping_sub(1))
                    .copied()
                    .unwrap_or(0),
            );
            self.id_ends.truncate(self.doc_ids);
            return match container {
                Some(true) => Role::DataArray,
                Some(false) => {
                    self.resources += 1;
                    Role::Resource
                }
                None => Role::Other,
            };
        }
        Role::Other
    }

    fn open(&mut self, array: bool, role: Role) {
        // Nothing inside a container of no billing role is billed: it is only counted through
        // (and skipped fast by `feed`), like the levels past the tracked depth.
        if self.untracked > 0 || role == Role::Other || self.stack.len() >= MAX_TRACKED_DEPTH {
            self.untracked += 1;
            return;
        }
        let _fits = self.stack.push(Level {
            array,
            role,
            expect_key: !array,
            key: Key::Other,
            id_kept: false,
        });
    }

    fn close(&mut self) {
        if self.untracked > 0 {
            self.untracked -= 1;
        } else {
            self.stack.pop();
        }
    }

    fn in_string(&mut self, capture: Capture, escaped: bool, b: u8) {
        if escaped {
            self.lex = Lex::Str {
                capture,
                escaped: false,
            };
            if capture != Capture::Skip {
                let decoded = match b {
                    b'"' => b'"',
                    b'\\' => b'\\',
                    b'/' => b'/',
                    b'b' => 0x08,
                    b'f' => 0x0c,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'u' => {
                        self.lex = Lex::Unicode {
                            capture,
                            digits: 0,
                            unit: 0,
                        };
                        return;
                    }
                    _ => {
                        self.spoiled = true;
                        return;
                    }
                };
                self.push_decoded(capture, &[decoded]);
            }
            return;
        }
        match b {
            b'\\' => {
                self.lex = Lex::Str {
                    capture,
                    escaped: true,
                }
            }
            b'"' => {
                self.lex = Lex::Between;
                self.string_ends(capture);
            }
            _ => {
                if capture != Capture::Skip {
                    self.push_decoded(capture, &[b]);
                }
            }
        }
    }

    fn in_unicode(&mut self, capture: Capture, digits: u8, unit: u16, b: u8) {
        let Some(d) = char::from(b).to_digit(16) else {
            self.spoiled = true;
            self.lex = Lex::Str {
                capture,
                escaped: false,
            };
            // The byte is read again as part of the string (a quote still ends it).
            self.in_string(capture, false, b);
            return;
        };
        let unit = (unit << 4) | u16::try_from(d).unwrap_or(0);
        if digits < 3 {
            self.lex = Lex::Unicode {
                capture,
                digits: digits + 1,
                unit,
            };
            return;
        }
        self.lex = Lex::Str {
            capture,
            escaped: false,
        };
        let code = match (self.high.take(), unit) {
            (None, 0xD800..=0xDBFF) => {
                self.high = Some(unit);
                return;
            }
            (Some(high), 0xDC00..=0xDFFF) => {
                0x10000 + ((u32::from(high) - 0xD800) << 10) + (u32::from(unit) - 0xDC00)
            }
            (Some(_), _) | (None, 0xDC00..=0xDFFF) => {
                self.spoiled = true;
                return;
            }
            (None, unit) => u32::from(unit),
        };
        match char::from_u32(code) {
            Some(c) => {
                let mut utf8 = [0; 4];
                self.push_decoded(capture, c.encode_utf8(&mut utf8).as_bytes());
            }
            None => self.spoiled = true,
        }
    }

    fn push_decoded(&mut self, capture: Capture, bytes: &[u8]) {
        if self.high.is_some() {
            // A high surrogate not followed by its low half.
            self.spoiled = true;
        }
        let limit = if capture == Capture::Key {
            MAX_KEY_BYTES
        } else {
            MAX_ID_BYTES
        };
        if self.buf.len() + bytes.len() > limit {
            self.spoiled = true;
            if capture == Capture::Key {
                // Too long to be `data` or `id`: the rest is skipped like any string (the
                // level's key stays `Other`).
                self.lex = Lex::Str {
                    capture: Capture::Skip,
                    escaped: false,
                };
            }
        } else {
            self.buf.extend(bytes);
        }
    }

    fn string_ends(&mut self, capture: Capture) {
        let whole = !self.spoiled && self.high.is_none();
        match capture {
            Capture::Skip => {}
            Capture::Key => {
                let key = match (whole, self.buf.as_slice()) {
                    (true, b"data") => Key::Data,
                    (true, b"id") => Key::Id,
                    _ => Key::Other,
                };
                if let Some(l) = self.stack.last_mut() {
                    l.key = key;
                }
            }
            Capture::Id => {
                let id = if whole {
                    std::str::from_utf8(self.buf.as_slice()).ok()
                } else {
                    None
                };
                match id {
                    Some(id) if self.id_ends.len() < MAX_IDS => {
                        self.id_bytes.push_str(id);
                        self.id_ends.push(self.id_bytes.len());
                        if let Some(l) = self.stack.last_mut() {
                            l.id_kept = true;
                        }
                    }
                    _ => self.ids_dropped += 1,
                }
            }
        }
        if capture == Capture::Key {
            return;
        }
        // A string value at a resource's `id` only counts once: the key is spent.
        if let Some(l) = self.stack.last_mut() {
            if !l.array {
                l.key = Key::Other;
            }
        }
    }
}

#[cfg(test)]
mod tests;
