//! `sft-plot`: what every plot of the workspace shares, so sweeps (`sft-sweep`) and the
//! representation analysis (`sft-analyze`) draw text and colours the same way.
//!
//! * [`register_font`]: plot text is drawn by `plotters` with `ab_glyph` from a TrueType file
//!   found at run time (`SFT_FONT`, else the first of [`FONT_CANDIDATES`] that exists), so
//!   plotting needs neither fontconfig nor freetype.
//! * [`colour`]: the one palette (Tableau 10, matplotlib's default cycle).

#![deny(missing_docs)]

use std::path::PathBuf;
use std::sync::OnceLock;

use plotters::style::{FontStyle, RGBColor};

/// TrueType files tried in order when `SFT_FONT` is not set (Debian/Ubuntu `fonts-dejavu-core`,
/// Fedora/Arch DejaVu, Liberation, macOS).
pub const FONT_CANDIDATES: [&str; 6] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

/// No usable TrueType font: none of the candidates exists, or the file is not a font.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no font for plots: {0}")]
pub struct FontError(pub String);

static FONT: OnceLock<Result<PathBuf, FontError>> = OnceLock::new();

/// Registers the plot font (family `sans-serif`) once per process: `SFT_FONT` if set, else the
/// first of [`FONT_CANDIDATES`] that exists. Returns the file used; later calls return the
/// first call's result.
pub fn register_font() -> Result<PathBuf, FontError> {
    FONT.get_or_init(|| {
        let candidates: Vec<PathBuf> = match std::env::var_os("SFT_FONT") {
            Some(p) => vec![PathBuf::from(p)],
            None => FONT_CANDIDATES.iter().map(PathBuf::from).collect(),
        };
        let path = candidates.iter().find(|p| p.is_file()).ok_or_else(|| {
            FontError(format!(
                "none of {} exists; install a TrueType font (Debian: apt-get install fonts-dejavu-core) or set SFT_FONT",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        let bytes = std::fs::read(path).map_err(|e| FontError(format!("{}: {e}", path.display())))?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| FontError(format!("{}: not a usable TrueType font", path.display())))?;
        Ok(path.clone())
    })
    .clone()
}

/// The palette: Tableau 10 (blue, orange, green, red, purple, brown, pink, grey, olive, cyan).
pub const TABLEAU10: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The `i`-th colour of [`TABLEAU10`], cycling.
pub fn colour(i: usize) -> RGBColor {
    TABLEAU10[i % TABLEAU10.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_palette_cycles() {
        assert_eq!(colour(0), RGBColor(31, 119, 180));
        assert_eq!(colour(10), colour(0));
        assert_eq!(colour(13), TABLEAU10[3]);
    }

    #[test]
    fn a_font_is_found_and_registered_once() {
        let p = register_font().expect("a TrueType font (see FONT_CANDIDATES or set SFT_FONT)");
        assert!(p.is_file());
        assert_eq!(register_font().unwrap(), p);
    }
}
