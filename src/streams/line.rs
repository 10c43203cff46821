//! A stream's bytes as messages: lines cut from the chunks X sends, and the one member of a
//! filtered-stream message xgate rewrites per client, `matching_rules`.
//!
//! Owns [`Lines`] (chunks to whole lines, without copying a line that lies inside one chunk),
//! [`matching_rules_span`] (where that member's value lies, found by a scanner that reads
//! strings and brackets only) and [`Matched`] (that value parsed once per message, then
//! written out per client with the client's own tags; the rest of the line is copied as
//! bytes).

use std::ops::Range;

use bytes::{Bytes, BytesMut};

/// The longest message accepted; a longer one means the connection is broken.
pub const MAX_LINE: usize = 16 << 20;

/// A stream line longer than [`MAX_LINE`].
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("a stream message is longer than {MAX_LINE} bytes")]
pub struct LineTooLong;

/// Cuts a stream's chunks into lines, each with its `\n` (X ends them with `\r\n`).
#[derive(Debug, Default)]
pub struct Lines {
    partial: BytesMut,
}

impl Lines {
    /// Feeds `chunk`, giving every line it completes to `out`.
    pub fn push(
        &mut self,
        mut chunk: Bytes,
        mut out: impl FnMut(Bytes),
    ) -> Result<(), LineTooLong> {
        while let Some(at) = memchr::memchr(b'\n', &chunk) {
            let line = chunk.split_to(at + 1);
            if self.partial.is_empty() {
                out(line);
            } else {
                self.partial.extend_from_slice(&line);
                out(self.partial.split().freeze());
            }
        }
        if self.partial.len() + chunk.len() > MAX_LINE {
            self.partial.clear();
            return Err(LineTooLong);
        }
        self.partial.extend_from_slice(&chunk);
        Ok(())
    }

    /// Drops a partial line (the connection it came from ended).
    pub fn reset(&mut self) {
        self.partial.clear();
    }
}

/// Whether `line` is a keep-alive: nothing but `\r\n` (or whitespace).
pub fn is_keepalive(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

/// The end of the string whose opening quote is at `i` (one past its closing quote).
fn string_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        let at = j + memchr::memchr2(b'"', b'\\', b.get(j..)?)?;
        if b.get(at) == Some(&b'\\') {
            j = at + 2;
        } else {
            return Some(at + 1);
        }
    }
}

/// The end of the JSON value that starts at `i` (scalars end at the next delimiter).
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => string_end(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while let Some(&c) = b.get(j) {
                match c {
                    b'"' => {
                        j = string_end(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.saturating_sub(1);
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let rest = b.get(i..)?;
            let len = rest
                .iter()
                .position(|c| matches!(c, b',' | b'}' | b']') || c.is_ascii_whitespace())
                .unwrap_or(rest.len());
            (len > 0).then_some(i + len)
        }
    }
}

/// Where the value of the top-level member `"matching_rules"` of the JSON object `line` lies
/// (its last occurrence, as JSON parsers read a repeated key); `None` when the line is not an
/// object or has no such member.
pub fn matching_rules_span(line: &[u8]) -> Option<Range<usize>> {
    const KEY: &[u8] = b"\"matching_rules\"";
    let mut found = None;
    let mut i = skip_ws(line, 0);
    if line.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(line, i);
        if line.get(i) != Some(&b'"') {
            return found;
        }
        let Some(key_end) = string_end(line, i) else {
            return found;
        };
        let is_it = line.get(i..key_end) == Some(KEY);
        i = skip_ws(line, key_end);
        if line.get(i) != Some(&b':') {
            return found;
        }
        let start = skip_ws(line, i + 1);
        let Some(end) = value_end(line, start) else {
            return found;
        };
        if is_it {
            found = Some(start..end);
        }
        i = skip_ws(line, end);
        match line.get(i) {
            Some(b',') => i += 1,
            _ => return found,
        }
    }
}

/// One rule of a message's `matching_rules`: X's id, and the rest of its members (X's tag
/// among them, replaced per client).
#[derive(Debug)]
struct Rule {
    id: String,
    rest: serde_json::Map<String, serde_json::Value>,
}

/// A filtered-stream message with its `matching_rules` parsed (once, whoever receives it).
#[derive(Debug)]
pub struct Matched {
    line: Bytes,
    span: Range<usize>,
    rules: Vec<Rule>,
}

impl Matched {
    /// `line`'s `matching_rules`, parsed; `None` when it has none, or none that parses (the
    /// line then goes to every consumer as it is).
    pub fn parse(line: Bytes) -> Option<Self> {
        let span = matching_rules_span(&line)?;
        let raw: Vec<serde_json::Map<String, serde_json::Value>> =
            serde_json::from_slice(line.get(span.clone())?).ok()?;
        let rules = raw
            .into_iter()
            .filter_map(|mut rest| {
                let id = match rest.remove("id")? {
                    serde_json::Value::String(s) => s,
                    serde_json::Value::Number(n) => n.to_string(),
                    _ => return None,
                };
                rest.remove("tag");
                Some(Rule { id, rest })
            })
            .collect();
        Some(Self { line, span, rules })
    }

    /// X's ids of the rules it matched.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.id.as_str())
    }

    /// The line as one client receives it: only the rules `tag_of` knows (it gives the
    /// client's tag, or `Some(None)` for a rule of the client's without one), with those tags;
    /// `None` when the client has none of them.
    pub fn for_client<'t>(
        &self,
        tag_of: impl Fn(&str) -> Option<Option<&'t str>>,
    ) -> Option<Bytes> {
        let mut out: Option<Vec<u8>> = None;
        for rule in &self.rules {
            let Some(tag) = tag_of(&rule.id) else {
                continue;
            };
            let buf = out.get_or_insert_with(|| {
                let mut v = Vec::with_capacity(self.line.len());
                v.extend_from_slice(self.line.get(..self.span.start).unwrap_or_default());
                v.push(b'[');
                v
            });
            if buf.last() != Some(&b'[') {
                buf.push(b',');
            }
            // `{"id":…,"tag":…,<X's other members>}`; writing JSON into a Vec cannot fail.
            buf.extend_from_slice(b"{\"id\":");
            let _infallible = serde_json::to_writer(&mut *buf, &rule.id);
            if let Some(tag) = tag {
                buf.extend_from_slice(b",\"tag\":");
                let _infallible = serde_json::to_writer(&mut *buf, tag);
            }
            for (k, v) in &rule.rest {
                buf.push(b',');
                let _infallible = serde_json::to_writer(&mut *buf, k);
                buf.push(b':');
                let _infallible = serde_json::to_writer(&mut *buf, v);
            }
            buf.push(b'}');
        }
        let mut buf = out?;
        buf.push(b']');
        buf.extend_from_slice(self.line.get(self.span.end..).unwrap_or_default());
        Some(Bytes::from(buf))
    }
}
