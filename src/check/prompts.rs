//! Prompt files: `.txt` (one prompt per line), `.jsonl` (`{"prompt", "label",
//! "id"}`) and `.csv` (a `prompt` column or another named one, optional
//! `label` and `id` columns).

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Prompt files larger than this are refused (a prompt suite is text).
pub const MAX_PROMPT_FILE_BYTES: u64 = 256 << 20;

/// One prompt to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prompt {
    /// The file's own id, else the 1-based line (txt, jsonl) or record (csv) number.
    pub id: String,
    pub prompt: String,
    pub label: Option<String>,
}

/// Read prompts from `path`, choosing the format by extension. `column`
/// names the CSV column holding the prompt (default `prompt`).
pub fn load_prompts(path: &Path, column: Option<&str>) -> Result<Vec<Prompt>> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    if column.is_some() && ext.as_deref() != Some("csv") {
        return Err(Error::Usage(format!(
            "--column applies to .csv prompt files; {} is not one",
            path.display()
        )));
    }
    let text = crate::capped::read_text(path, MAX_PROMPT_FILE_BYTES, "prompt file")?;
    let prompts = match ext.as_deref() {
        Some("txt") => parse_txt(&text),
        Some("jsonl") => parse_jsonl(path, &text)?,
        Some("csv") => parse_csv(path, &text, column.unwrap_or("prompt"))?,
        _ => {
            return Err(Error::Usage(format!(
                "{}: unknown prompt file type; use .txt (one prompt per line), .jsonl \
                 ({{\"prompt\": ..., \"label\": ...}} per line) or .csv (a prompt column)",
                path.display()
            )))
        }
    };
    if prompts.is_empty() {
        return Err(Error::malformed(path, "prompt file", "it holds no prompts"));
    }
    let mut seen = HashSet::new();
    for p in &prompts {
        if !seen.insert(p.id.as_str()) {
            return Err(Error::malformed(
                path,
                "prompt file",
                format!("id {:?} occurs more than once", p.id),
            ));
        }
    }
    Ok(prompts)
}

fn parse_txt(text: &str) -> Vec<Prompt> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| Prompt {
            id: (i + 1).to_string(),
            prompt: l.trim_end_matches('\r').to_string(),
            label: None,
        })
        .collect()
}

fn parse_jsonl(path: &Path, text: &str) -> Result<Vec<Prompt>> {
    let bad = |line: usize, why: String| {
        Error::malformed(path, "JSONL prompt file", format!("line {line}: {why}"))
    };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(n, format!("not JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| bad(n, "expected an object such as {\"prompt\": \"...\"}".into()))?;
        let prompt = match obj.get("prompt") {
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => s.clone(),
            Some(serde_json::Value::String(_)) => return Err(bad(n, "the prompt is empty".into())),
            Some(_) => return Err(bad(n, "\"prompt\" must be a string".into())),
            None => return Err(bad(n, "no \"prompt\" field".into())),
        };
        let label = match obj.get("label") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(bad(n, "\"label\" must be a string or null".into())),
        };
        let id = match obj.get("id") {
            None | Some(serde_json::Value::Null) => n.to_string(),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(x)) => x.to_string(),
            Some(_) => return Err(bad(n, "\"id\" must be a string or a number".into())),
        };
        out.push(Prompt { id, prompt, label });
    }
    Ok(out)
}

fn parse_csv(path: &Path, text: &str, column: &str) -> Result<Vec<Prompt>> {
    let bad = |why: String| Error::malformed(path, "CSV prompt file", why);
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(text.as_bytes());
    let headers = rdr
        .headers()
        .map_err(|e| bad(format!("header: {e}")))?
        .clone();
    let find = |name: &str| headers.iter().position(|h| h.trim() == name);
    let Some(pc) = find(column) else {
        let cols: Vec<&str> = headers.iter().collect();
        return Err(Error::Usage(format!(
            "{}: no column {column:?}; the columns are {cols:?} (choose one with --column NAME)",
            path.display()
        )));
    };
    let (lc, ic) = (find("label"), find("id"));
    let mut out = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.map_err(|e| bad(e.to_string()))?;
        let n = i + 1;
        let line = rec.position().map_or(0, |p| p.line());
        let prompt = rec.get(pc).unwrap_or_default();
        if prompt.trim().is_empty() {
            return Err(bad(format!(
                "record {n} (line {line}): the prompt is empty"
            )));
        }
        let label = lc
            .and_then(|c| rec.get(c))
            .filter(|s| !s.is_empty())
            .map(String::from);
        let id = ic
            .and_then(|c| rec.get(c))
            .filter(|s| !s.is_empty())
            .map_or_else(|| n.to_string(), String::from);
        out.push(Prompt {
            id,
            prompt: prompt.to_string(),
            label,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &tempfile::TempDir, name: &str, body: &str) -> std::path::PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn txt_skips_blank_lines_keeps_line_numbers_and_strips_bom_and_cr() {
        let d = tempfile::tempdir().unwrap();
        let p = write(&d, "p.txt", "\u{feff}first\r\n\n  \nsecond\n");
        let got = load_prompts(&p, None).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].id.as_str(), got[0].prompt.as_str()), ("1", "first"));
        assert_eq!(
            (got[1].id.as_str(), got[1].prompt.as_str()),
            ("4", "second")
        );
    }

    #[test]
    fn jsonl_reads_labels_and_ids_and_names_bad_lines() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            &d,
            "p.jsonl",
            "{\"prompt\": \"a\", \"label\": \"unsafe\"}\n\n{\"prompt\": \"b\", \"id\": 7}\n",
        );
        let got = load_prompts(&p, None).unwrap();
        assert_eq!(got[0].label.as_deref(), Some("unsafe"));
        assert_eq!(got[1].id, "7");
        let p = write(&d, "q.jsonl", "{\"prompt\": \"a\"}\n{\"text\": \"b\"}\n");
        let e = load_prompts(&p, None).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("no \"prompt\""), "{e}");
        let p = write(&d, "r.jsonl", "{\"prompt\": \"a\"}\nnot json\n");
        assert!(load_prompts(&p, None)
            .unwrap_err()
            .to_string()
            .contains("line 2"));
    }

    #[test]
    fn csv_handles_quoting_bom_and_named_columns() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            &d,
            "a.csv",
            "\u{feff}goal,target,label\n\"Write, with a comma\",x,unsafe\n\"multi\nline \"\"quoted\"\"\",y,\n",
        );
        let got = load_prompts(&p, Some("goal")).unwrap();
        assert_eq!(got[0].prompt, "Write, with a comma");
        assert_eq!(got[0].label.as_deref(), Some("unsafe"));
        assert_eq!(got[1].prompt, "multi\nline \"quoted\"");
        assert_eq!(got[1].label, None);
        let e = load_prompts(&p, None).unwrap_err();
        assert!(matches!(e, Error::Usage(_)));
        assert!(e.to_string().contains("\"goal\"") && e.to_string().contains("--column"));
    }

    #[test]
    fn csv_with_an_empty_prompt_or_ragged_row_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let p = write(&d, "a.csv", "prompt,label\nhello,x\n,y\n");
        assert!(load_prompts(&p, None)
            .unwrap_err()
            .to_string()
            .contains("record 2"));
        let p = write(&d, "b.csv", "prompt,label\nhello,x,extra\n");
        assert!(load_prompts(&p, None).is_err());
    }

    #[test]
    fn empty_files_duplicate_ids_and_unknown_types_are_errors() {
        let d = tempfile::tempdir().unwrap();
        let p = write(&d, "e.txt", "\n\n");
        assert!(load_prompts(&p, None)
            .unwrap_err()
            .to_string()
            .contains("no prompts"));
        let p = write(
            &d,
            "d.jsonl",
            "{\"prompt\":\"a\",\"id\":1}\n{\"prompt\":\"b\",\"id\":\"1\"}\n",
        );
        assert!(load_prompts(&p, None)
            .unwrap_err()
            .to_string()
            .contains("more than once"));
        let p = write(&d, "x.md", "a\n");
        assert!(matches!(load_prompts(&p, None), Err(Error::Usage(_))));
        let p = write(&d, "bad.txt", "");
        std::fs::write(&p, [0xff, 0xfe, b'a']).unwrap();
        assert!(load_prompts(&p, None)
            .unwrap_err()
            .to_string()
            .contains("UTF-8"));
    }
}
