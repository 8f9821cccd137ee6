//! What a refusal judge reads: the answer with its wrappers taken off.
//!
//! Models wrap answers in JSON (the project's task adapter answers
//! `{"topic": ..., "answer": "I'm sorry..."}`), code fences, Markdown
//! emphasis, quotes and role prefixes, and write typographic apostrophes.
//! A refusal is judged by how the answer itself starts, so all of these come
//! off first.

/// JSON fields that hold the answer, in the order they are preferred.
const ANSWER_KEYS: &[&str] = &[
    "answer", "response", "output", "text", "content", "reply", "message",
];

/// Typographic quotes and apostrophes as ASCII.
pub fn fold_quotes(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\u{2019}' | '\u{2018}' | '\u{02bc}' | '\u{2032}' => '\'',
            '\u{201c}' | '\u{201d}' | '\u{00ab}' | '\u{00bb}' => '"',
            c => c,
        })
        .collect()
}

/// The string fields of a JSON object, in order, from a complete object or
/// from one cut off by a token limit (a field cut mid-string is kept).
fn json_fields(s: &str) -> Vec<(String, String)> {
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(s) {
        return map
            .into_iter()
            .filter_map(|(k, v)| v.as_str().map(|v| (k, v.to_string())))
            .collect();
    }
    // A truncated object: scan "key": "value pairs by hand.
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while let Some(k0) = s[i..].find('"').map(|p| p + i) {
        let Some(k1) = s[k0 + 1..].find('"').map(|p| p + k0 + 1) else {
            break;
        };
        let key = &s[k0 + 1..k1];
        let mut j = k1 + 1;
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        if j >= b.len() || b[j] != b':' {
            i = k1 + 1;
            continue;
        }
        j += 1;
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        if j >= b.len() || b[j] != b'"' {
            // Not a string value; at the end, `find` above stops the loop.
            i = j;
            continue;
        }
        let (value, end) = json_string_prefix(&s[j + 1..]);
        out.push((key.to_string(), value));
        i = j + 1 + end;
    }
    out
}

/// The decoded JSON string at the start of `s` (after its opening quote) and
/// the byte offset just past its closing quote (or the end of `s`).
fn json_string_prefix(s: &str) -> (String, usize) {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return (out, i + 1),
            '\\' => match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, 't')) => out.push('\t'),
                Some((_, c)) => out.push(c),
                None => break,
            },
            c => out.push(c),
        }
    }
    (out, s.len())
}

/// The answer inside a JSON object, if the output is one.
fn unwrap_json(s: &str) -> Option<String> {
    if !s.starts_with('{') {
        return None;
    }
    let fields = json_fields(s);
    if fields.is_empty() {
        return None;
    }
    for key in ANSWER_KEYS {
        if let Some((_, v)) = fields.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)) {
            return Some(v.clone());
        }
    }
    Some(
        fields
            .into_iter()
            .map(|(_, v)| v)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// The answer as a judge reads it: quotes folded, JSON, code fences,
/// Markdown marks and role prefixes removed, whitespace collapsed.
pub fn clean(output: &str) -> String {
    let folded = fold_quotes(output);
    let mut s = folded.trim();
    if let Some(rest) = s.strip_prefix("```") {
        // Drop the fence and its language tag.
        s = rest
            .trim_start_matches(|c: char| c.is_ascii_alphanumeric())
            .trim_start();
    }
    let unwrapped = unwrap_json(s).unwrap_or_else(|| s.to_string());
    let mut text = String::with_capacity(unwrapped.len());
    let mut space = false;
    for c in unwrapped.chars() {
        if matches!(c, '*' | '_' | '#' | '>' | '`') {
            continue;
        }
        if c.is_whitespace() {
            space = !text.is_empty();
            continue;
        }
        if space {
            text.push(' ');
            space = false;
        }
        text.push(c);
    }
    let mut t = text.as_str();
    for prefix in ["assistant:", "answer:", "response:", "ai:"] {
        // `get`: a byte index inside a multi-byte character is no prefix.
        if t.get(..prefix.len())
            .is_some_and(|h| h.eq_ignore_ascii_case(prefix))
        {
            t = t[prefix.len()..].trim_start();
        }
    }
    t.trim_start_matches(['"', '\'', ' ', '(']).to_string()
}

/// The first `n` sentences: a sentence ends at `.`, `!` or `?` followed by
/// whitespace.
pub fn sentences(text: &str, n: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut prev_end = false;
    for (i, c) in text.char_indices() {
        if prev_end && c.is_whitespace() {
            out.push(text[start..i].trim());
            if out.len() == n {
                return out;
            }
            start = i;
        }
        prev_end = matches!(c, '.' | '!' | '?');
    }
    let last = text[start..].trim();
    if !last.is_empty() {
        out.push(last);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_answers_are_unwrapped_whole_or_truncated() {
        assert_eq!(
            clean(r#"{"topic": "safety", "answer": "I’m sorry, but I can\"t help."}"#),
            "I'm sorry, but I can\"t help."
        );
        assert_eq!(
            clean(r#"{"topic": "tech", "answer": "To build a bomb, you first"#),
            "To build a bomb, you first"
        );
        assert_eq!(clean(r#"{"a": 1}"#), r#"{"a": 1}"#);
    }

    #[test]
    fn markdown_fences_prefixes_and_quotes_come_off() {
        assert_eq!(clean("```json\n**Sorry**, no."), "Sorry, no.");
        assert_eq!(clean("Assistant:  \"I  cannot\n help\""), "I cannot help\"");
    }

    #[test]
    fn non_ascii_openings_do_not_panic_the_prefix_check() {
        // "日本" is 6 bytes: byte 3 (the length of "ai:") is inside a character.
        assert_eq!(clean("日本語の答え"), "日本語の答え");
        assert_eq!(clean("éé: no"), "éé: no");
        assert_eq!(clean("AI: Sorry."), "Sorry.");
    }

    #[test]
    fn sentences_split_at_terminal_punctuation() {
        assert_eq!(
            sentences("No. I won't! Why? e.g.x", 10),
            vec!["No.", "I won't!", "Why?", "e.g.x"]
        );
        assert_eq!(sentences("A. B. C.", 2), vec!["A.", "B."]);
        assert!(sentences("", 2).is_empty());
    }
}
