//! Decimal digits written without `core::fmt`: the few numbers on the request path (the
//! OAuth 1.0a timestamp, a port, the access line's figures) go straight into a buffer, without
//! a formatter's dynamic dispatch and argument parsing.

/// `n` in decimal, written into the end of `buf`; the digits written.
pub fn decimal(buf: &mut [u8; 20], mut n: u64) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        if let Some(d) = buf.get_mut(at) {
            // `n % 10` is a digit.
            *d = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || at == 0 {
            return buf.get(at..).unwrap_or_default();
        }
    }
}

/// Appends `n` in decimal to `out`, zero-padded to at least `width` digits: one copy, not a
/// push per digit.
pub fn push_decimal(out: &mut String, n: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let len = decimal(&mut buf, n).len();
    for _ in buf.len()..width {
        out.push('0');
    }
    // The digits with their padding are the tail of `buf`, which starts as zeros.
    let from = buf.len().saturating_sub(len.max(width));
    let padded = buf.get(from..).unwrap_or_default();
    // ASCII digits only, so this never falls back to the empty default.
    out.push_str(std::str::from_utf8(padded).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_matches_display() {
        for n in [0, 7, 10, 99, 1_000, 4_294_967_295, u64::MAX] {
            assert_eq!(decimal(&mut [0; 20], n), n.to_string().as_bytes());
            for width in [0, 1, 3, 6, 25] {
                let mut s = String::from("x");
                push_decimal(&mut s, n, width);
                assert_eq!(s, format!("x{n:0width$}"));
            }
        }
    }
}
