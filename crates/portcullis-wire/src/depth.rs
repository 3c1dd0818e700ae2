//! A nesting-depth check that runs on raw bytes before any parser sees them,
//! so a deeply nested body costs one linear scan and no recursion.

/// Returns the maximum nesting depth of `bytes` as JSON, ignoring brackets
/// inside strings, or `None` as soon as it exceeds `limit`.
///
/// The scan does not validate JSON; malformed input is left to the parser.
pub fn within_depth(bytes: &[u8], limit: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut max = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > limit {
                    return None;
                }
                max = max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Some(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_objects_and_arrays() {
        assert_eq!(within_depth(br#"{"a":[1,{"b":2}]}"#, 10), Some(3));
        assert_eq!(within_depth(b"1", 10), Some(0));
    }

    #[test]
    fn ignores_brackets_in_strings() {
        assert_eq!(within_depth(br#"{"a":"[[[[{{{\"]]"}"#, 1), Some(1));
    }

    #[test]
    fn rejects_past_limit() {
        let deep = "[".repeat(100_000);
        assert_eq!(within_depth(deep.as_bytes(), 64), None);
        let ok = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert_eq!(within_depth(ok.as_bytes(), 64), Some(64));
    }
}
