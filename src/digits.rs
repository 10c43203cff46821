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

/// Appends `n` in decimal to `out`, zero-padded to at least `width` digits.
pub fn push_decimal(out: &mut String, n: u64, width: usize) {
    let mut buf = [0; 20];
    let digits = decimal(&mut buf, n);
    for _ in digits.len()..width {
        out.push('0');
    }
    // ASCII digits only.
    out.extend(digits.iter().map(|&d| char::from(d)));
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
