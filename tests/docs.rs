//! The documentation checked against what exists: the configuration reference against the
//! parser (every key documented, no key documented that the parser refuses), every config
//! in the docs accepted by `pgsluice check-config`, every relative link and anchor
//! resolving, the README linking every page, and every alert carrying a runbook that exists.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// README.md and every page of docs/, as (path relative to the root, text).
fn pages() -> Vec<(String, String)> {
    let mut out = vec![("README.md".to_owned(), read("README.md"))];
    let mut docs: Vec<_> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md"))
        .collect();
    docs.sort();
    out.extend(docs.into_iter().map(|n| {
        let rel = format!("docs/{n}");
        let text = read(&rel);
        (rel, text)
    }));
    out
}

/// The text outside fenced code blocks.
fn prose(text: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The fenced blocks of `lang`.
fn blocks(text: &str, lang: &str) -> Vec<String> {
    let open = format!("```{lang}");
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match &mut current {
            None if line.trim_end() == open => current = Some(String::new()),
            Some(_) if line.trim_start().starts_with("```") => out.extend(current.take()),
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
            None => {}
        }
    }
    out
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    prose(text)
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| slug(l.trim_start_matches('#')))
        .collect()
}

/// Every `[text](target)` in the prose of `text`.
fn links(text: &str) -> Vec<String> {
    let prose = prose(text);
    let mut out = Vec::new();
    let mut rest = prose.as_str();
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        if let Some(end) = rest.find(')') {
            out.push(rest[..end].to_owned());
        }
    }
    out
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let pages = pages();
    let by_path: BTreeMap<PathBuf, &String> = pages
        .iter()
        .map(|(p, t)| (root().join(p).canonicalize().unwrap(), t))
        .collect();
    let mut broken = Vec::new();
    for (page, text) in &pages {
        let dir = root().join(page).parent().unwrap().to_owned();
        for link in links(text) {
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = link.split_once('#').unwrap_or((&link, ""));
            let target = if file.is_empty() {
                root().join(page)
            } else {
                dir.join(file)
            };
            let Ok(target) = target.canonicalize() else {
                broken.push(format!("{page}: {link}: no such file"));
                continue;
            };
            if anchor.is_empty() {
                continue;
            }
            match by_path.get(&target) {
                Some(t) if anchors(t).contains(anchor) => {}
                Some(_) => broken.push(format!("{page}: {link}: no such heading")),
                None => broken.push(format!("{page}: {link}: anchor into a non-page")),
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_readme_links_every_docs_page() {
    let readme = read("README.md");
    let linked: BTreeSet<String> = links(&readme)
        .into_iter()
        .map(|l| l.split('#').next().unwrap_or_default().to_owned())
        .collect();
    let missing: Vec<String> = pages()
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| p != "README.md" && !linked.contains(p))
        .collect();
    assert!(missing.is_empty(), "not linked from README.md: {missing:?}");
}

const PROBE_BASE: &str = "[[listeners]]\naddr = \"127.0.0.1:6432\"\nmode = \"session\"\n";

/// The keys the parser expects where `text` puts the unknown key `zzz`, from its error.
fn expected_keys(text: &str) -> Option<Vec<String>> {
    let e = pgsluice::config::Config::parse(text, Path::new("probe.toml"))
        .err()?
        .to_string();
    let (_, list) = e.split_once("unknown field `zzz`, expected ")?;
    Some(
        list.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect(),
    )
}

/// Every (table path, key) the parser accepts, found by asking it: a key `zzz` is refused
/// with the list of keys the table has (`deny_unknown_fields`), and a key whose value may be
/// a table (or a list of them) is probed one level down.
fn parser_keys() -> BTreeSet<(String, String)> {
    let sections = expected_keys(&format!("zzz = 1\n{PROBE_BASE}")).expect("top level probed");
    let mut out = BTreeSet::new();
    for section in sections {
        let (header, keys) = [format!("[{section}]"), format!("[[{section}]]")]
            .into_iter()
            .find_map(|h| {
                let base = if section == "listeners" {
                    ""
                } else {
                    PROBE_BASE
                };
                expected_keys(&format!("{base}{h}\nzzz = 1\n")).map(|k| (h, k))
            })
            .unwrap_or_else(|| panic!("[{section}] does not refuse unknown keys"));
        let base = if section == "listeners" {
            ""
        } else {
            PROBE_BASE
        };
        for key in keys {
            for value in ["{ zzz = 1 }", "[{ zzz = 1 }]"] {
                let text = format!("{base}{header}\n{key} = {value}\n");
                if let Some(inner) = expected_keys(&text) {
                    let path = format!("{section}.{key}");
                    out.extend(inner.into_iter().map(|k| (path.clone(), k)));
                    break;
                }
            }
            out.insert((section.clone(), key));
        }
    }
    out
}

/// The (table path, key) rows of docs/configuration.md's reference: under each `###`
/// heading naming paths in backticks (`[general]`, `users.limits`), its `| `key` |` rows.
fn documented_keys() -> BTreeSet<(String, String)> {
    let text = read("docs/configuration.md");
    let reference = text
        .split_once("\n## Reference\n")
        .expect("docs/configuration.md has a Reference section")
        .1;
    let mut out = BTreeSet::new();
    let mut paths: Vec<String> = Vec::new();
    for line in reference.lines() {
        if let Some(h) = line.strip_prefix("### ") {
            paths = h
                .split('`')
                .skip(1)
                .step_by(2)
                .map(|p| p.trim_matches(|c| c == '[' || c == ']').to_owned())
                .collect();
        } else if let Some(row) = line.strip_prefix("| `") {
            let key = row.split('`').next().unwrap_or_default();
            for p in &paths {
                out.insert((p.clone(), key.to_owned()));
            }
        }
    }
    out
}

#[test]
fn the_configuration_reference_lists_exactly_the_keys_the_parser_accepts() {
    let parser = parser_keys();
    assert!(parser.len() > 150, "the probe found only {}", parser.len());
    let documented = documented_keys();
    let undocumented: Vec<_> = parser.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&parser).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "docs/configuration.md's Reference: undocumented keys {undocumented:?}; \
         documented keys the parser refuses {unknown:?}"
    );
}

/// Runs `pgsluice check-config` on `text` with every `${NAME}` in it set; (ok, stderr).
fn check_config(dir: &Path, name: &str, text: &str) -> (bool, String) {
    let file = dir.join(name);
    std::fs::write(&file, text).unwrap();
    let vars: BTreeSet<&str> = text
        .split("${")
        .skip(1)
        .filter_map(|t| t.split('}').next())
        .collect();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgsluice"))
        .arg("check-config")
        .arg(&file)
        .envs(vars.into_iter().map(|v| (v, "x")))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every configuration the docs show whole (it has `[[listeners]]`) passes check-config;
/// certificate paths in it are pointed at certificates made here.
#[test]
fn every_configuration_in_the_docs_is_accepted() {
    let dir = std::env::temp_dir().join(format!("pgsluice-docs-{}", std::process::id()));
    let pki = support::certs::make(&dir, "", "docs");
    let mut checked = 0;
    for (page, text) in pages() {
        for (i, block) in blocks(&text, "toml").into_iter().enumerate() {
            if !block.contains("[[listeners]]") {
                continue;
            }
            let block = block
                .replace(
                    "/etc/pgsluice/server.crt",
                    &pki.server_cert.to_string_lossy(),
                )
                .replace(
                    "/etc/pgsluice/server.key",
                    &pki.server_key.to_string_lossy(),
                );
            let (ok, err) = check_config(&dir, &format!("{i}.toml"), &block);
            assert!(ok, "{page}, block {i}:\n{block}\n{err}");
            checked += 1;
        }
    }
    assert!(checked >= 2, "{checked} configurations found in the docs");
    let _ = std::fs::remove_dir_all(&dir);
}

/// check-config's warnings: a public listener without TLS, a password in the file, and
/// pools past what PostgreSQL allows by default, each named with its line; still exit 0.
#[test]
fn check_config_warns_about_risky_settings() {
    let dir = std::env::temp_dir().join(format!("pgsluice-risky-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = "[[listeners]]\naddr = \"0.0.0.0:6432\"\nmode = \"session\"\n\n\
                [[databases]]\nname = \"app\"\nport = 5432\npool_size = 60\n\n\
                [[users]]\nname = \"a\"\npassword = \"hunter2\"\n\n\
                [[users]]\nname = \"b\"\npassword = \"${B_PASSWORD}\"\nserver_user = \"reporter\"\n";
    let (ok, err) = check_config(&dir, "risky.toml", text);
    assert!(ok, "{err}");
    let file = dir.join("risky.toml");
    let lines: Vec<&str> = err.lines().collect();
    let f = file.display();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(
        lines[0].starts_with(&format!(
            "{f}:1: warning: key `listeners.addr`: 0.0.0.0:6432"
        )),
        "{err}"
    );
    assert!(
        lines[1].starts_with(&format!("{f}:5: warning: key `databases.pool_size`"))
            && lines[1].contains("may open 120 connections to 127.0.0.1:5432"),
        "{err}"
    );
    assert!(
        lines[2].starts_with(&format!("{f}:12: warning: key `users.password`")),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every alert rule carries a `runbook_url` into docs/troubleshooting.md, at a section that
/// exists and names the alert.
#[test]
fn every_alert_has_a_runbook_that_exists() {
    let rules = read("deploy/prometheus/alerts.yml");
    let troubleshooting = read("docs/troubleshooting.md");
    let sections = anchors(&troubleshooting);
    let mut alerts = 0;
    for rule in rules.split("- alert: ").skip(1) {
        alerts += 1;
        let name = rule.split_whitespace().next().unwrap_or_default();
        let url = rule
            .lines()
            .find_map(|l| l.trim().strip_prefix("runbook_url: "))
            .unwrap_or_else(|| panic!("{name} has no runbook_url"))
            .trim_matches('"');
        let anchor = url
            .strip_prefix("docs/troubleshooting.md#")
            .unwrap_or_else(|| panic!("{name}: {url} is not in docs/troubleshooting.md"));
        assert_eq!(anchor, slug(name), "{name}: the runbook is its own section");
        assert!(sections.contains(anchor), "{name}: no section {anchor}");
    }
    assert_eq!(alerts, 16, "alert rules found");
}

/// `pgsluice`'s help text for `args`.
fn help(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgsluice"))
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "pgsluice {args:?} --help");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The shell commands of every page's sh blocks, continuation lines joined.
fn shell_commands() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (page, text) in pages() {
        for block in blocks(&text, "sh") {
            let joined = block.replace("\\\n", " ");
            for line in joined.lines() {
                let cmd = line.split(" #").next().unwrap_or_default().trim();
                if !cmd.is_empty() && !cmd.starts_with('#') {
                    out.push((page.clone(), cmd.to_owned()));
                }
            }
        }
    }
    out
}

/// Every `pgsluice ...` and `./dev ...` command the docs show exists as written: the
/// subcommand is one pgsluice has, and every `--flag` is one it takes.
#[test]
fn every_command_in_the_docs_exists() {
    let top = help(&[]);
    let commands: Vec<String> = top
        .split("Commands:")
        .nth(1)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    assert!(commands.contains(&"check-config".to_owned()), "{top}");
    let dev = read("dev");
    let mut checked = 0;
    for (page, cmd) in shell_commands() {
        // The program is the first word after any NAME=value assignments.
        let mut words = cmd.split_whitespace().skip_while(|w| w.contains('='));
        match words.next() {
            Some("pgsluice") => {
                let args: Vec<&str> = words.collect();
                // pgsluice takes no positional argument of its own: the first one (after
                // the global flags and their values) is the subcommand.
                let mut rest = args.iter();
                let mut sub = None;
                while let Some(a) = rest.next() {
                    if matches!(*a, "--config" | "-c" | "--log-format") {
                        rest.next();
                    } else if !a.starts_with('-') {
                        sub = Some(*a);
                        break;
                    }
                }
                if let Some(sub) = sub {
                    assert!(
                        commands.iter().any(|c| c == sub),
                        "{page}: `{cmd}`: {sub} is not a pgsluice command"
                    );
                }
                let sub_help = sub.map(|s| help(&[s])).unwrap_or_default();
                let words_of = |h: &str| -> Vec<String> {
                    h.split(|c: char| c.is_whitespace() || ",[]=<".contains(c))
                        .map(str::to_owned)
                        .collect()
                };
                let known: Vec<String> = [words_of(&top), words_of(&sub_help)].concat();
                for flag in args.iter().filter(|a| a.starts_with('-')) {
                    let flag = flag.split('=').next().unwrap_or_default();
                    assert!(
                        known.iter().any(|w| w == flag),
                        "{page}: `{cmd}`: pgsluice has no {flag}"
                    );
                }
                checked += 1;
            }
            Some("./dev") => {
                let sub = words.next().unwrap_or_default();
                assert!(
                    dev.contains(&format!("\n{sub})")),
                    "{page}: `{cmd}`: ./dev has no {sub}"
                );
                checked += 1;
            }
            _ => {}
        }
    }
    assert!(checked >= 10, "{checked} commands found");
}
