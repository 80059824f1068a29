//! A font that does not exist gives an error saying how to get one (its own process: the font
//! is registered once per process).

#[test]
fn a_missing_font_says_how_to_get_one() {
    std::env::set_var("SFT_FONT", "/nonexistent/font.ttf");
    let e = sft_plot::register_font().unwrap_err().to_string();
    assert!(
        e.contains("/nonexistent/font.ttf")
            && e.contains("fonts-dejavu-core")
            && e.contains("SFT_FONT"),
        "{e}"
    );
    // Remembered: the second call gives the same answer without looking again.
    std::env::remove_var("SFT_FONT");
    assert!(sft_plot::register_font().is_err());
}
