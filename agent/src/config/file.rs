//! Reading TOML files into one merged table, and a walker over it that knows the dotted path of
//! every key, so that every error names the key (`app.stop_timeout: ...`) and every key nobody
//! asked for is reported as unknown.
//!
//! We walk a `toml::Table` by hand instead of deriving `Deserialize`: serde's errors name the field
//! but not its path, and print multi-line snippets; an image author wants one line with the key.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use toml::{Table, Value};

use super::values::StatusSet;
use super::ConfigError;

/// Reads `paths` in order: a file is read as it is, a directory contributes its `*.toml` files in
/// name order. Later files override the keys of earlier ones; tables merge key by key, anything
/// else (arrays included: `[[secret]]` lists) is replaced whole. Missing paths are an error only
/// when `required` (an explicit `-c`); the default locations are optional. The path `-` is
/// standard input (`-c - < my.toml`, a Dockerfile's or a CI's habit), read once, with the same bound
/// as a file.
pub fn load(paths: &[PathBuf], required: bool) -> Result<(Table, Vec<PathBuf>), ConfigError> {
    let mut merged = Table::new();
    let mut read = Vec::new();
    for path in paths {
        if path.as_os_str() == STDIN {
            if read.iter().any(|p: &PathBuf| p.as_os_str() == STDIN) {
                return Err(ConfigError::new(
                    "config",
                    "standard input (-) can be read only once",
                ));
            }
            let text = bounded_read(std::io::stdin().lock())
                .map_err(|e| ConfigError::new("config", format!("cannot read -: {e}")))?;
            merge(&mut merged, parse_text(&text, "- (standard input)")?);
            read.push(path.clone());
            continue;
        }
        let files = match std::fs::read_dir(path) {
            Ok(entries) => {
                let mut files: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
                    .collect();
                files.sort();
                files
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => vec![path.clone()],
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => continue,
            Err(e) => {
                return Err(ConfigError::new(
                    "config",
                    format!("cannot read {}: {e}", path.display()),
                ))
            }
        };
        for file in files {
            let table = parse_file(&file)?;
            merge(&mut merged, table);
            read.push(file);
        }
    }
    Ok((merged, read))
}

/// The largest configuration file read. Ours are a few KiB; a bigger one is a mistake (or
/// `/dev/zero`), and must not eat the memory of the VM.
pub const MAX_FILE: u64 = 1024 * 1024;

/// The configuration path that means standard input.
const STDIN: &str = "-";

/// Reads a configuration file: a regular file (a FIFO named by path would hang the start, a device
/// would never end; standard input is asked for explicitly with `-`) of at most [`MAX_FILE`] bytes.
fn read_config(file: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(file).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file (use -c - to read standard input)".into());
    }
    bounded_read(std::fs::File::open(file).map_err(|e| e.to_string())?)
}

/// At most [`MAX_FILE`] bytes of UTF-8 text; one byte more is an error, not a cut.
fn bounded_read(from: impl std::io::Read) -> Result<String, String> {
    use std::io::Read;
    let mut text = String::new();
    from.take(MAX_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_FILE {
        return Err(format!("larger than {MAX_FILE} bytes"));
    }
    Ok(text)
}

fn parse_file(file: &Path) -> Result<Table, ConfigError> {
    let text = read_config(file)
        .map_err(|e| ConfigError::new("config", format!("cannot read {}: {e}", file.display())))?;
    parse_text(&text, &file.display().to_string())
}

fn parse_text(text: &str, name: &str) -> Result<Table, ConfigError> {
    text.parse::<Table>().map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
        let at = line.map(|l| format!(" line {l}")).unwrap_or_default();
        let msg = e.message().trim().replace('\n', " ");
        ConfigError::new("config", format!("{name}{at}: {msg}"))
    })
}

fn merge(into: &mut Table, from: Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(Value::Table(old)), Value::Table(new)) => merge(old, new),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

/// A key as TOML would write it: bare when it can be, quoted otherwise (`""`, `"bad header"`), so
/// that an error always shows which key it means.
pub(super) fn quote(key: &str) -> String {
    if !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        key.to_string()
    } else {
        serde_json::to_string(key).unwrap_or_default()
    }
}

/// One table of the configuration and the dotted path that leads to it. Every accessor marks its
/// key as known; [`Section::finish`] reports the first key that nobody asked for.
pub struct Section<'a> {
    path: String,
    table: Option<&'a Table>,
    seen: RefCell<BTreeSet<&'a str>>,
}

impl<'a> Section<'a> {
    pub fn root(table: &'a Table) -> Self {
        Section {
            path: String::new(),
            table: Some(table),
            seen: RefCell::default(),
        }
    }

    pub fn key(&self, key: &str) -> String {
        let key = quote(key);
        if self.path.is_empty() {
            key
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        let (k, v) = self.table?.get_key_value(key)?;
        self.seen.borrow_mut().insert(k.as_str());
        Some(v)
    }

    fn type_error(&self, key: &str, want: &str, got: &Value) -> ConfigError {
        ConfigError::new(
            self.key(key),
            format!("expected {want}, found {}", got.type_str()),
        )
    }

    pub fn string(&self, key: &str) -> Result<Option<&'a str>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.type_error(key, "a string", v)),
        }
    }

    pub fn integer(
        &self,
        key: &str,
        range: std::ops::RangeInclusive<i64>,
    ) -> Result<Option<i64>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Integer(n)) if range.contains(n) => Ok(Some(*n)),
            Some(Value::Integer(n)) => Err(ConfigError::new(
                self.key(key),
                format!("{n} is out of range ({}..={})", range.start(), range.end()),
            )),
            Some(v) => Err(self.type_error(key, "an integer", v)),
        }
    }

    pub fn boolean(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Boolean(b)) => Ok(Some(*b)),
            Some(v) => Err(self.type_error(key, "true or false", v)),
        }
    }

    /// A string parsed by one of the `values` parsers; its error is prefixed with the key.
    pub fn parsed<T>(
        &self,
        key: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        match self.string(key)? {
            None => Ok(None),
            Some(s) => parse(s)
                .map(Some)
                .map_err(|m| ConfigError::new(self.key(key), m)),
        }
    }

    /// One of a fixed set of words.
    pub fn choice<T: Copy>(
        &self,
        key: &str,
        choices: &[(&str, T)],
    ) -> Result<Option<T>, ConfigError> {
        self.parsed(key, |s| {
            choices
                .iter()
                .find(|(name, _)| *name == s)
                .map(|(_, v)| *v)
                .ok_or_else(|| {
                    let names: Vec<_> = choices.iter().map(|(n, _)| format!("\"{n}\"")).collect();
                    format!("\"{s}\" is not one of {}", names.join(", "))
                })
        })
    }

    /// A non-empty array of strings (a command line).
    pub fn command(&self, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
        let Some(list) = self.strings(key)? else {
            return Ok(None);
        };
        if list.is_empty() || list[0].is_empty() {
            return Err(ConfigError::new(
                self.key(key),
                "the command must not be empty",
            ));
        }
        Ok(Some(list))
    }

    pub fn strings(&self, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(s.clone()),
                    v => Err(ConfigError::new(
                        format!("{}[{i}]", self.key(key)),
                        format!("expected a string, found {}", v.type_str()),
                    )),
                })
                .collect::<Result<_, _>>()
                .map(Some),
            Some(v) => Err(self.type_error(key, "an array of strings", v)),
        }
    }

    /// A sub-table; absent tables read as empty so that defaults apply.
    pub fn table(&self, key: &str) -> Result<Section<'a>, ConfigError> {
        let table = match self.get(key) {
            None => None,
            Some(Value::Table(t)) => Some(t),
            Some(v) => return Err(self.type_error(key, "a table", v)),
        };
        Ok(Section {
            path: self.key(key),
            table,
            seen: RefCell::default(),
        })
    }

    /// An array of tables (`[[secret]]`), each with its index in the path: `secret[1].name`.
    pub fn tables(&self, key: &str) -> Result<Vec<Section<'a>>, ConfigError> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::Table(t) => Ok(Section {
                        path: format!("{}[{i}]", self.key(key)),
                        table: Some(t),
                        seen: RefCell::default(),
                    }),
                    v => Err(ConfigError::new(
                        format!("{}[{i}]", self.key(key)),
                        format!("expected a table, found {}", v.type_str()),
                    )),
                })
                .collect(),
            Some(v) => Err(self.type_error(key, "an array of tables", v)),
        }
    }

    /// An HTTP status set: an integer (`200`) or a string (`"200-299,304"`).
    pub fn status(&self, key: &str) -> Result<Option<StatusSet>, ConfigError> {
        match self.table.and_then(|t| t.get(key)) {
            Some(Value::Integer(_)) => {
                let n = self.integer(key, 100..=599)?.unwrap_or_default() as u16;
                Ok(Some(StatusSet(vec![n..=n])))
            }
            _ => self.parsed(key, super::values::status_set),
        }
    }

    /// A table of string values (HTTP headers).
    pub fn string_map(&self, key: &str) -> Result<Vec<(String, String)>, ConfigError> {
        let section = self.table(key)?;
        let Some(table) = section.table else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for name in table.keys() {
            let value = section.string(name)?.unwrap_or_default();
            out.push((name.clone(), value.to_string()));
        }
        Ok(out)
    }

    /// Whether the table has this key (without marking it).
    pub fn has(&self, key: &str) -> bool {
        self.table.is_some_and(|t| t.contains_key(key))
    }

    /// Fails on the first key that no accessor asked for: a typo must not be silently ignored.
    pub fn finish(&self) -> Result<(), ConfigError> {
        let Some(table) = self.table else {
            return Ok(());
        };
        let seen = self.seen.borrow();
        match table.keys().find(|k| !seen.contains(k.as_str())) {
            Some(k) => Err(ConfigError::new(self.key(k), "unknown key")),
            None => Ok(()),
        }
    }
}
