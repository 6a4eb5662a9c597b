//! Text normalization (Unicode NFKC, whitespace) and the simple quality filters.
//!
//! NFKC runs only where it can change something: the text is cut before each ASCII
//! character and each CJK unified ideograph (all are their own NFKC form, starters, and
//! never combine with a preceding character, so each is a normalization boundary), and
//! only the pieces holding another character go through `unicode-normalization`, each
//! from the boundary character before it (which may compose with it: e + U+0301). For
//! mostly-ASCII or mostly-Han text this skips nearly all table lookups; a test holds
//! the result equal to NFKC of the whole text.

use std::borrow::Cow;

use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfkc_quick};

use super::minhash::is_cjk;

/// How document text is normalized before filtering, hashing and writing.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct NormalizeConfig {
    /// Apply Unicode NFKC (compatibility composition: full-width forms, ligatures,
    /// compatibility ideographs to their canonical characters).
    pub nfkc: bool,
    /// Fold whitespace: CR LF and other line breaks to `\n`; runs of other whitespace
    /// inside a line to one space; lines trimmed; at most one empty line in a row; no
    /// leading or trailing empty lines. Control characters (but `\n` and `\t`), U+200B
    /// and U+FEFF are removed.
    pub whitespace: bool,
}

impl Default for NormalizeConfig {
    fn default() -> Self {
        NormalizeConfig {
            nfkc: true,
            whitespace: true,
        }
    }
}

/// The quality filters applied to normalized text.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct FilterConfig {
    /// Documents with fewer characters than this (after normalization) are dropped.
    pub min_chars: usize,
    /// Documents whose share of non-text characters (see [`non_text_ratio`]) is above
    /// this are dropped.
    pub max_non_text: f64,
}

impl Default for FilterConfig {
    fn default() -> Self {
        FilterConfig {
            min_chars: 20,
            max_non_text: 0.5,
        }
    }
}

/// Why a document failed the quality filters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rejection {
    /// Fewer characters than [`FilterConfig::min_chars`] (it had this many).
    TooShort(usize),
    /// More non-text characters than [`FilterConfig::max_non_text`] (this share).
    NonText(f64),
}

/// Normalizes `text` as configured.
pub fn normalize(text: &str, config: NormalizeConfig) -> String {
    let text = if config.nfkc {
        nfkc(text)
    } else {
        Cow::Borrowed(text)
    };
    if config.whitespace {
        fold_whitespace(&text)
    } else {
        text.into_owned()
    }
}

/// Whether `c` is a normalization boundary that NFKC leaves alone (see the module doc):
/// ASCII, CJK punctuation `、` to `〩` (U+3001..U+3029), CJK unified ideographs.
fn is_stable(c: char) -> bool {
    c.is_ascii() || matches!(c as u32, 0x3001..=0x3029 | 0x3400..=0x4DBF | 0x4E00..=0x9FFF)
}

/// The NFKC form of a full-width ASCII variant (U+FF01..U+FF5E, `，` `！` `：` ...) or the
/// ideographic space: one ASCII character (their compatibility decomposition).
fn full_width_to_ascii(c: char) -> Option<char> {
    match c as u32 {
        0xFF01..=0xFF5E => char::from_u32(c as u32 - 0xFEE0),
        0x3000 => Some(' '),
        _ => None,
    }
}

/// Unicode NFKC of `text`, borrowed when nothing changes (see the module doc).
pub fn nfkc(text: &str) -> Cow<'_, str> {
    let Some(first) = text.find(|c| !is_stable(c)) else {
        return Cow::Borrowed(text);
    };
    let mut out = String::with_capacity(text.len() + 8);
    let mut changed = false;
    let mut done = 0; // bytes of `text` already in `out`
    let mut unstable = first;
    loop {
        // A full-width form followed by a boundary (nothing to combine with) maps alone.
        let mut rest = text[unstable..].chars();
        if let Some(ascii) = rest.next().and_then(full_width_to_ascii)
            && rest.next().is_none_or(is_stable)
        {
            out.push_str(&text[done..unstable]);
            out.push(ascii);
            changed = true;
            done = unstable + 3;
            match text[done..].find(|c| !is_stable(c)) {
                Some(i) => unstable = done + i,
                None => break,
            }
            continue;
        }
        // The piece: from the boundary character before the unstable run to the next
        // boundary.
        let start = text[done..unstable]
            .char_indices()
            .next_back()
            .map_or(unstable, |(i, _)| done + i);
        let end = text[unstable..]
            .find(is_stable)
            .map_or(text.len(), |i| unstable + i);
        out.push_str(&text[done..start]);
        let piece = &text[start..end];
        if is_nfkc_quick(piece.chars()) == IsNormalized::Yes {
            out.push_str(piece);
        } else {
            let before = out.len();
            out.extend(piece.nfkc());
            changed |= &out[before..] != piece;
        }
        done = end;
        match text[end..].find(|c| !is_stable(c)) {
            Some(i) => unstable = end + i,
            None => break,
        }
    }
    if !changed {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[done..]);
    Cow::Owned(out)
}

/// Whether `c` ends a line.
fn is_line_break(c: char) -> bool {
    matches!(
        c,
        '\n' | '\r' | '\u{0B}' | '\u{0C}' | '\u{85}' | '\u{2028}' | '\u{2029}'
    )
}

/// Whether `c` is dropped outright: control characters other than line breaks and tabs,
/// the zero-width space and the byte-order mark.
fn is_dropped(c: char) -> bool {
    (c.is_control() && c != '\t' && !is_line_break(c)) || c == '\u{200B}' || c == '\u{FEFF}'
}

/// The whitespace folding of [`NormalizeConfig::whitespace`].
fn fold_whitespace(text: &str) -> String {
    /// What a character is to the folding.
    enum Class {
        Visible,
        Space,
        Break,
        Dropped,
    }
    let class = |c: char| {
        if c.is_ascii() {
            match c {
                ' ' | '\t' => Class::Space,
                '\n' | '\r' | '\u{0B}' | '\u{0C}' => Class::Break,
                c if c.is_ascii_control() => Class::Dropped,
                _ => Class::Visible,
            }
        } else if is_dropped(c) {
            Class::Dropped
        } else if is_line_break(c) {
            Class::Break
        } else if c.is_whitespace() {
            Class::Space
        } else {
            Class::Visible
        }
    };
    let mut out = String::with_capacity(text.len());
    // Line breaks seen since the last visible character, and whether a space is owed.
    let mut breaks = 0usize;
    let mut space = false;
    // Start of the run of visible characters being copied.
    let mut run: Option<usize> = None;
    let mut after_cr = false;
    for (i, c) in text.char_indices() {
        let kind = class(c);
        if matches!(kind, Class::Visible) {
            if run.is_none() {
                if !out.is_empty() {
                    match breaks {
                        0 if space => out.push(' '),
                        0 => {}
                        1 => out.push('\n'),
                        _ => out.push_str("\n\n"),
                    }
                }
                breaks = 0;
                space = false;
                run = Some(i);
            }
            after_cr = false;
            continue;
        }
        if let Some(start) = run.take() {
            out.push_str(&text[start..i]);
        }
        match kind {
            Class::Break => {
                // CR LF is one break.
                if !(c == '\n' && after_cr) {
                    breaks += 1;
                }
                space = false;
            }
            Class::Space => space = true,
            Class::Dropped | Class::Visible => {}
        }
        after_cr = c == '\r';
    }
    if let Some(start) = run {
        out.push_str(&text[start..]);
    }
    out
}

/// Character counts of a text, from one pass over it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TextStats {
    /// Characters.
    pub chars: usize,
    /// Characters that are not whitespace.
    pub visible: usize,
    /// Visible characters that are neither letters nor digits (punctuation, symbols,
    /// placeholders such as `□`).
    pub non_text: usize,
    /// Visible characters that are CJK (see [`is_cjk`]).
    pub cjk: usize,
}

impl TextStats {
    /// Counts the characters of `text`.
    pub fn of(text: &str) -> Self {
        let mut s = TextStats::default();
        for c in text.chars() {
            s.chars += 1;
            if c.is_ascii() {
                // As `char::is_whitespace` for ASCII (which counts U+000B too).
                let visible = !matches!(c, ' ' | '\t'..='\r');
                s.visible += usize::from(visible);
                s.non_text += usize::from(visible && !c.is_ascii_alphanumeric());
            } else if is_cjk(c) {
                s.visible += 1;
                s.cjk += 1;
            } else if !c.is_whitespace() {
                s.visible += 1;
                s.non_text += usize::from(!c.is_alphanumeric());
            }
        }
        s
    }

    /// The share of visible characters that are not text; 1 for a text with none.
    pub fn non_text_ratio(&self) -> f64 {
        if self.visible == 0 {
            1.0
        } else {
            self.non_text as f64 / self.visible as f64
        }
    }
}

/// The share of the non-whitespace characters of `text` that are neither letters nor
/// digits (punctuation, symbols, placeholders such as `□`); 1 for a text with none.
pub fn non_text_ratio(text: &str) -> f64 {
    TextStats::of(text).non_text_ratio()
}

/// Applies the quality filters to a normalized text's counts: first the length, then
/// the share of non-text characters.
pub fn check_quality(stats: &TextStats, config: FilterConfig) -> Result<(), Rejection> {
    if stats.chars < config.min_chars {
        return Err(Rejection::TooShort(stats.chars));
    }
    let ratio = stats.non_text_ratio();
    if ratio > config.max_non_text {
        return Err(Rejection::NonText(ratio));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(text: &str) -> String {
        normalize(text, NormalizeConfig::default())
    }

    #[test]
    fn nfkc_folds_compatibility_forms() {
        // Full-width letters and punctuation, a ligature, a compatibility ideograph.
        assert_eq!(norm("ＡＢＣ，ｆｉ ﬁ"), "ABC,fi fi");
        assert_eq!(norm("\u{F900}"), "\u{8C48}");
        // Decomposed e + combining acute composes.
        assert_eq!(norm("e\u{301}"), "\u{E9}");
        let off = NormalizeConfig {
            nfkc: false,
            whitespace: true,
        };
        assert_eq!(normalize("ＡＢＣ", off), "ＡＢＣ");
    }

    /// The piecewise NFKC equals NFKC of the whole text on random mixes of characters
    /// that normalize in every way: boundaries, compatibility forms, combining marks
    /// before and after boundaries, kana voicing marks, Hangul jamo.
    #[test]
    fn piecewise_nfkc_equals_whole_nfkc() {
        let alphabet: Vec<char> =
            "aeAZ 1,.\n床前明月光\u{3400}，。：！ＡＢｆｉﬁ\u{F900}\u{301}\u{308}\u{327}\
             、「」〡〩〶\u{302A}！？（）～\u{FF5F}\t\r\u{85}\
             éÅかが\u{3099}\u{309A}ｶﾞ\u{1100}\u{1161}\u{11A8}가\u{2460}²\u{3000}\u{FEFF}"
                .chars()
                .collect();
        let mut state = 3u64;
        for round in 0..3000 {
            let len = 1 + round % 24;
            let text: String = (0..len)
                .map(|_| {
                    let r = super::super::minhash::splitmix64(&mut state);
                    alphabet[(r % alphabet.len() as u64) as usize]
                })
                .collect();
            let want: String = text.nfkc().collect();
            assert_eq!(nfkc(&text), want, "{text:?}");
        }
        assert!(matches!(nfkc("plain ascii 床前明月光"), Cow::Borrowed(_)));
        assert!(matches!(nfkc("かな"), Cow::Borrowed(_)));
    }

    /// The obvious char-by-char whitespace folding.
    fn fold_whitespace_reference(text: &str) -> String {
        let mut out = String::new();
        let (mut breaks, mut space) = (0usize, false);
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            if is_dropped(c) || (c == '\r' && chars.peek() == Some(&'\n')) {
                continue;
            }
            if is_line_break(c) {
                breaks += 1;
                space = false;
            } else if c.is_whitespace() {
                space = true;
            } else {
                if !out.is_empty() {
                    match breaks {
                        0 if space => out.push(' '),
                        0 => {}
                        1 => out.push('\n'),
                        _ => out.push_str("\n\n"),
                    }
                }
                (breaks, space) = (0, false);
                out.push(c);
            }
        }
        out
    }

    #[test]
    fn run_copying_fold_equals_the_reference() {
        let alphabet: Vec<char> = "ab床。 \t\n\r\u{0B}\u{0C}\u{85}\u{2028}\u{3000}\u{A0}\u{0}\u{7F}\u{9F}\u{200B}\u{FEFF}é"
            .chars()
            .collect();
        let mut state = 9u64;
        for round in 0..5000 {
            let text: String = (0..1 + round % 20)
                .map(|_| {
                    let r = super::super::minhash::splitmix64(&mut state);
                    alphabet[(r % alphabet.len() as u64) as usize]
                })
                .collect();
            assert_eq!(
                fold_whitespace(&text),
                fold_whitespace_reference(&text),
                "{text:?}"
            );
        }
    }

    #[test]
    fn whitespace_is_folded_but_paragraphs_stay() {
        assert_eq!(
            norm("  a \t b  \r\nc\u{3000}d\n\n\n\ne  \n"),
            "a b\nc d\n\ne"
        );
        assert_eq!(norm("\u{FEFF}x\u{200B}y\u{0}z\r\r"), "xyz");
        assert_eq!(norm("line\u{2028}next"), "line\nnext");
        assert_eq!(norm(" \n \t "), "");
        let off = NormalizeConfig {
            nfkc: true,
            whitespace: false,
        };
        assert_eq!(normalize(" a  b ", off), " a  b ");
    }

    #[test]
    fn non_text_ratio_counts_punctuation_and_symbols() {
        assert_eq!(non_text_ratio("ab, cd!"), 2.0 / 6.0);
        assert_eq!(non_text_ratio("秦川雄帝宅，函谷壯皇居。"), 2.0 / 12.0);
        assert_eq!(non_text_ratio("□□□□□，□□□□□。"), 1.0);
        assert_eq!(non_text_ratio("   "), 1.0);
    }

    #[test]
    fn filters_in_order_length_then_non_text() {
        let config = FilterConfig {
            min_chars: 5,
            max_non_text: 0.5,
        };
        let check = |t: &str| check_quality(&TextStats::of(t), config);
        assert_eq!(check("abcd"), Err(Rejection::TooShort(4)));
        assert_eq!(check("????"), Err(Rejection::TooShort(4)));
        assert_eq!(check("a!!!!"), Err(Rejection::NonText(0.8)));
        assert_eq!(check("ab!!!c"), Ok(()));
        assert_eq!(check("床前明月光"), Ok(()));
        let s = TextStats::of("床前 明月光。\nab, ∑é");
        assert_eq!((s.chars, s.visible, s.non_text, s.cjk), (14, 11, 3, 5));
    }
}
