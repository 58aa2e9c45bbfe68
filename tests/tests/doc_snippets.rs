//! Every ```rust block of the guides (docs/*.md) is compiled — and most are run — here.
//!
//! A guide's snippets live verbatim in its companion file, tests/snippets/<guide>.rs
//! (`getting-started.md` → `getting_started.rs`), each between `// snippet: <guide>.md <n>`
//! (`n` counts the guide's ```rust blocks from 1) and `// end snippet`, with whatever makes
//! it real code around the markers. `every_guide_snippet_is_compiled` checks that the
//! companions hold the guides' text; the modules below compile it.
//!
//! The companions are kept out of rustfmt: they hold the guides' layout (aligned comments,
//! one-line structs), and a snippet must read in its companion exactly as in its guide.

#[rustfmt::skip]
#[path = "../snippets/common.rs"]
mod common;

#[rustfmt::skip]
#[path = "../snippets/concepts.rs"]
mod concepts;

#[rustfmt::skip]
#[path = "../snippets/durability.rs"]
mod durability;

#[rustfmt::skip]
#[path = "../snippets/getting_started.rs"]
mod getting_started;

#[rustfmt::skip]
#[path = "../snippets/middleware.rs"]
mod middleware;

#[rustfmt::skip]
#[path = "../snippets/observability.rs"]
mod observability;

#[rustfmt::skip]
#[path = "../snippets/operations.rs"]
mod operations;

#[rustfmt::skip]
#[path = "../snippets/streaming.rs"]
mod streaming;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// One ```rust block of a guide, or its copy in a companion file.
#[derive(Debug)]
struct Snippet {
    /// The line its text starts on (1-based).
    line: usize,
    /// Its lines, normalized by [`normalize`].
    text: Vec<String>,
}

/// The repository's root (this crate is `tests/` in it).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `getting-started.md` → `tests/snippets/getting_started.rs`.
fn companion_of(guide: &str) -> String {
    format!(
        "tests/snippets/{}.rs",
        guide.trim_end_matches(".md").replace('-', "_")
    )
}

/// Trailing whitespace, leading and trailing blank lines, and the indentation all lines
/// share (a block in a list item is indented; so is a copy inside a function) removed.
fn normalize(lines: &[&str]) -> Vec<String> {
    let lines: Vec<&str> = lines.iter().map(|l| l.trim_end()).collect();
    let start = lines
        .iter()
        .position(|l| !l.is_empty())
        .unwrap_or(lines.len());
    let end = lines
        .iter()
        .rposition(|l| !l.is_empty())
        .map_or(start, |i| i + 1);
    let lines = &lines[start..end];
    let indent = lines
        .iter()
        .filter(|l| !l.is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    lines
        .iter()
        .map(|l| l.get(indent..).unwrap_or("").to_string())
        .collect()
}

/// The ```rust blocks of a Markdown file, in order (```rust,ignore and the like included),
/// or what is wrong with its fences.
fn rust_blocks(markdown: &str) -> Result<Vec<Snippet>, String> {
    let lines: Vec<&str> = markdown.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let opening = lines[i].trim_start();
        let fence_char = match opening.chars().next() {
            Some(c @ ('`' | '~')) => c,
            _ => {
                i += 1;
                continue;
            }
        };
        let fence_len = opening.chars().take_while(|&c| c == fence_char).count();
        if fence_len < 3 {
            i += 1;
            continue;
        }
        let info = opening[fence_len..].trim();
        let language = info.split([',', ' ', '\t']).next().unwrap_or("");
        let close = lines[i + 1..]
            .iter()
            .position(|l| {
                let l = l.trim();
                l.len() >= fence_len && l.chars().all(|c| c == fence_char)
            })
            .map(|offset| i + 1 + offset)
            .ok_or_else(|| format!("the code block opened on line {} is never closed", i + 1))?;
        if language == "rust" {
            blocks.push(Snippet {
                line: i + 2,
                text: normalize(&lines[i + 1..close]),
            });
        }
        i = close + 1;
    }
    Ok(blocks)
}

/// The snippets a companion file holds, by guide and number, or what is wrong with its
/// markers.
fn marked_snippets(source: &str) -> Result<BTreeMap<(String, usize), Snippet>, String> {
    const START: &str = "// snippet: ";
    const END: &str = "// end snippet";
    let mut snippets = BTreeMap::new();
    let mut open: Option<((String, usize), usize)> = None;
    for (i, line) in source.lines().enumerate() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix(START) {
            if let Some((_, start)) = open {
                return Err(format!(
                    "line {}: a snippet starts inside the one from line {start}",
                    i + 1
                ));
            }
            let parsed = name.split_once(' ').and_then(|(guide, n)| {
                let n = n.trim().parse::<usize>().ok().filter(|&n| n > 0)?;
                guide.ends_with(".md").then(|| (guide.to_string(), n))
            });
            let Some(key) = parsed else {
                return Err(format!(
                    "line {}: `{line}` is not `{START}<guide>.md <n>`",
                    i + 1
                ));
            };
            open = Some((key, i + 1));
        } else if line == END {
            let Some((key, start)) = open.take() else {
                return Err(format!("line {}: `{END}` without a snippet", i + 1));
            };
            let lines: Vec<&str> = source.lines().skip(start).take(i - start).collect();
            let snippet = Snippet {
                line: start + 1,
                text: normalize(&lines),
            };
            if let Some(earlier) = snippets.insert(key.clone(), snippet) {
                return Err(format!(
                    "{} {} is marked twice (lines {} and {start})",
                    key.0,
                    key.1,
                    earlier.line - 1
                ));
            }
        }
    }
    match open {
        Some((_, start)) => Err(format!("the snippet from line {start} has no `{END}`")),
        None => Ok(snippets),
    }
}

/// The first line where two texts differ, for a failure message.
fn first_difference(doc: &[String], copy: &[String]) -> String {
    let i = (0..doc.len().max(copy.len()))
        .find(|&i| doc.get(i) != copy.get(i))
        .unwrap_or(0);
    let show = |l: Option<&String>| l.map_or("(no line)".to_string(), |l| format!("`{l}`"));
    format!(
        "line {} of the block is {} in the guide, {} in the copy",
        i + 1,
        show(doc.get(i)),
        show(copy.get(i))
    )
}

/// Every ```rust block of docs/*.md appears verbatim between its markers in the guide's
/// companion file (which the modules above compile), and every marker names a block that
/// exists.
#[test]
fn every_guide_snippet_is_compiled() {
    let root = root();
    let mut failures = Vec::new();

    let mut guides: BTreeMap<String, Vec<Snippet>> = BTreeMap::new();
    for entry in fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            let guide = path.file_name().unwrap().to_str().unwrap().to_string();
            match rust_blocks(&fs::read_to_string(&path).unwrap()) {
                Ok(blocks) => {
                    guides.insert(guide, blocks);
                }
                Err(e) => failures.push(format!("docs/{guide}: {e}")),
            }
        }
    }
    assert!(
        !guides.is_empty(),
        "no guides found in {}",
        root.join("docs").display()
    );

    let this_file = fs::read_to_string(root.join("tests/tests/doc_snippets.rs")).unwrap();
    let mut companions: BTreeMap<String, BTreeMap<(String, usize), Snippet>> = BTreeMap::new();
    for entry in fs::read_dir(root.join("tests/snippets")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap();
        let file = format!("tests/snippets/{name}");
        if !this_file.contains(&format!("#[path = \"../snippets/{name}\"]")) {
            failures.push(format!(
                "{file} is not compiled: declare it as a module in tests/tests/doc_snippets.rs"
            ));
        }
        match marked_snippets(&fs::read_to_string(&path).unwrap()) {
            Ok(snippets) => {
                companions.insert(file, snippets);
            }
            Err(e) => failures.push(format!("{file}: {e}")),
        }
    }

    // Every block of every guide, in its companion.
    for (guide, blocks) in &guides {
        let companion = companion_of(guide);
        for (i, block) in blocks.iter().enumerate() {
            let n = i + 1;
            let first = block.text.first().map_or("", String::as_str);
            let about = format!(
                "docs/{guide}, ```rust block {n} (line {}: `{first}`)",
                block.line
            );
            let todo = format!(
                "update {companion}: copy the block between `// snippet: {guide} {n}` and \
                 `// end snippet`, and make what is around it compile"
            );
            match companions
                .get(&companion)
                .map(|c| c.get(&(guide.clone(), n)))
            {
                None => failures.push(format!("{about}: {companion} does not exist; {todo}")),
                Some(None) => failures.push(format!("{about} is not in {companion}; {todo}")),
                Some(Some(copy)) if copy.text != block.text => failures.push(format!(
                    "{about} differs from its copy at {companion} line {}: {}; {todo}",
                    copy.line,
                    first_difference(&block.text, &copy.text)
                )),
                Some(Some(_)) => {}
            }
        }
    }

    // Every marker names a block that exists, in the guide's own companion.
    for (file, snippets) in &companions {
        for ((guide, n), copy) in snippets {
            let at = format!("{file} line {}: `// snippet: {guide} {n}`", copy.line - 1);
            match guides.get(guide) {
                None => failures.push(format!(
                    "{at} names a guide docs/{guide} that does not exist: remove or rename it"
                )),
                Some(blocks) if *n > blocks.len() => failures.push(format!(
                    "{at} is stale: docs/{guide} has {} ```rust blocks; renumber or remove it",
                    blocks.len()
                )),
                Some(_) if companion_of(guide) != *file => failures.push(format!(
                    "{at} belongs in {}: move it there",
                    companion_of(guide)
                )),
                Some(_) => {}
            }
        }
    }

    assert!(
        failures.is_empty(),
        "the guides' code and tests/snippets disagree:\n\n{}\n",
        failures.join("\n\n")
    );
}

/// What the check stands on: blocks are found (```rust,ignore too, indented ones too, other
/// languages not), a copy compares equal whatever its indentation, a changed line does not,
/// and broken markers or fences are errors.
#[test]
fn the_snippet_check_sees_a_difference() {
    let guide =
        rust_blocks("text\n\n  ```rust,ignore\n  let a = 1;\n\n  let b = a;  \n  ```\n").unwrap();
    assert_eq!(guide.len(), 1);
    assert_eq!(guide[0].line, 4);
    assert_eq!(guide[0].text, ["let a = 1;", "", "let b = a;"]);

    let copy = marked_snippets("fn f() {\n    // snippet: x.md 1\n    let a = 1;\n\n    let b = a;\n    // end snippet\n}\n").unwrap();
    assert_eq!(copy[&("x.md".to_string(), 1)].text, guide[0].text);

    let changed =
        marked_snippets("// snippet: x.md 1\nlet a = 2;\n\nlet b = a;\n// end snippet\n").unwrap();
    assert_ne!(changed[&("x.md".to_string(), 1)].text, guide[0].text);

    assert!(marked_snippets("// snippet: x.md 1\nlet a = 1;\n").is_err());
    assert!(marked_snippets("// snippet: x.md\n// end snippet\n").is_err());
    assert!(rust_blocks("```rust\nlet a = 1;\n").is_err());
    assert!(
        rust_blocks("```sh\nls\n```\n```toml\n[a]\n```\n")
            .unwrap()
            .is_empty()
    );
}
