//! The risk sparkline: a small inline SVG polyline of scores over time
//! (no script, no style attribute: CSP allows neither inline).

use std::fmt::Write;

/// Width of the chart in SVG units.
pub const WIDTH: u32 = 120;
/// Height of the chart in SVG units.
pub const HEIGHT: u32 = 24;

/// The `points` attribute of a polyline of `scores` (0–100), oldest
/// first, spread over the chart's width; a single score is a flat line.
pub fn points(scores: &[u8]) -> String {
    let mut out = String::new();
    let n = scores.len();
    let step = if n > 1 {
        f64::from(WIDTH) / (n as f64 - 1.0)
    } else {
        0.0
    };
    let y = |s: u8| {
        let s = f64::from(s.min(100));
        f64::from(HEIGHT) - 1.0 - s * (f64::from(HEIGHT) - 2.0) / 100.0
    };
    for (i, s) in scores.iter().enumerate() {
        let x = step * i as f64;
        let _ = write!(out, "{}{x:.1},{:.1}", if i == 0 { "" } else { " " }, y(*s));
    }
    if n == 1 {
        let _ = write!(
            out,
            " {},{:.1}",
            WIDTH,
            scores.first().map_or(0.0, |s| y(*s))
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_span_the_chart() {
        assert_eq!(points(&[]), "");
        assert_eq!(points(&[0]), "0.0,23.0 120,23.0");
        assert_eq!(points(&[0, 100]), "0.0,23.0 120.0,1.0");
        assert_eq!(points(&[0, 50, 255]), "0.0,23.0 60.0,12.0 120.0,1.0");
    }
}
