//! Parsers for the small value languages of the configuration: durations, signal names, status
//! ranges, user specs and `http://` URLs. Each returns a message that says what was expected; the
//! caller prefixes it with the key.

use std::fmt;
use std::ops::RangeInclusive;
use std::time::Duration;

use nix::sys::signal::Signal;

/// `500ms`, `10s`, `1.5s`, `2m`, `1h`, `250us`. A bare number is refused: `timeout = 10` would be
/// ambiguous between seconds and milliseconds, and guessing wrong silently is worse than a clear
/// error at start-up.
pub fn duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let not_a_duration =
        || format!("\"{t}\" is not a duration (write e.g. \"500ms\", \"10s\", \"2m\")");
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("\"{t}\" has no unit (write e.g. \"500ms\", \"10s\", \"2m\")"))?;
    let (number, unit) = t.split_at(split);
    let unit_ns: u128 = match unit.trim() {
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" | "min" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        other => {
            return Err(format!(
                "unknown unit \"{other}\" in \"{t}\" (use us, ms, s, m or h)"
            ))
        }
    };
    // Exact integer arithmetic: through f64, "12222222222226us" came back one microsecond short
    // (found by the values fuzzer).
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && frac.is_empty() || frac.contains('.') || whole.len() > 20 {
        return Err(not_a_duration());
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| not_a_duration())?
    };
    let frac_digits = &frac[..frac.len().min(18)];
    let frac_ns = if frac_digits.is_empty() {
        0
    } else {
        let value: u128 = frac_digits.parse().map_err(|_| not_a_duration())?;
        value * unit_ns / 10u128.pow(frac_digits.len() as u32)
    };
    let ns = whole
        .checked_mul(unit_ns)
        .and_then(|n| n.checked_add(frac_ns))
        .filter(|n| *n <= 1_000_000_000 * 1_000_000_000);
    let ns = ns.ok_or_else(|| format!("\"{t}\" is out of range"))?;
    Ok(Duration::from_nanos(ns as u64))
}

/// Formats a duration the way [`duration`] reads it, for `--check` output.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if d.subsec_nanos() % 1_000_000 != 0 {
        format!("{}us", d.as_micros())
    } else if ms % 1000 != 0 || ms == 0 {
        format!("{ms}ms")
    } else {
        format!("{}s", ms / 1000)
    }
}

/// `SIGTERM`, `TERM`, `sigterm` or a number. KILL and STOP cannot be caught, so they are refused as
/// a *stop* or *notify* signal only by the caller where that matters.
pub fn signal(text: &str) -> Result<Signal, String> {
    let t = text.trim();
    if let Ok(n) = t.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| format!("{n} is not a signal number"));
    }
    let upper = t.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>()
        .map_err(|_| format!("\"{t}\" is not a signal name (e.g. \"SIGTERM\", \"SIGUSR2\")"))
}

/// A set of HTTP status ranges: `"200-399"`, `"200"`, `"200,204,300-399"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusSet(pub Vec<RangeInclusive<u16>>);

impl StatusSet {
    pub fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|r| r.contains(&status))
    }
}

impl fmt::Display for StatusSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if r.start() == r.end() {
                write!(f, "{}", r.start())?;
            } else {
                write!(f, "{}-{}", r.start(), r.end())?;
            }
        }
        Ok(())
    }
}

pub fn status_set(text: &str) -> Result<StatusSet, String> {
    let code = |s: &str| -> Result<u16, String> {
        match s.trim().parse::<u16>() {
            Ok(n) if (100..=599).contains(&n) => Ok(n),
            _ => Err(format!("\"{}\" is not an HTTP status (100-599)", s.trim())),
        }
    };
    let mut ranges = Vec::new();
    for part in text.split(',') {
        let range = match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (code(a)?, code(b)?);
                if a > b {
                    return Err(format!("range \"{}\" is empty", part.trim()));
                }
                a..=b
            }
            None => {
                let a = code(part)?;
                a..=a
            }
        };
        ranges.push(range);
    }
    Ok(StatusSet(ranges))
}

/// Who the app runs as, as written: `name`, `uid`, `uid:gid`, `name:group`. Names are resolved
/// against the user database at start-up (see `supervisor::spawn`), not here: this module does no
/// I/O.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserSpec {
    pub user: String,
    pub group: Option<String>,
}

impl fmt::Display for UserSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.group {
            Some(g) => write!(f, "{}:{g}", self.user),
            None => f.write_str(&self.user),
        }
    }
}

pub fn user_spec(text: &str) -> Result<UserSpec, String> {
    let valid = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-$".contains(&b))
    };
    let (user, group) = match text.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (text, None),
    };
    if !valid(user) || group.is_some_and(|g| !valid(g)) {
        return Err(format!(
            "\"{text}\" is not a user (write a name, a uid, \"uid:gid\" or \"name:group\")"
        ));
    }
    Ok(UserSpec {
        user: user.to_string(),
        group: group.map(str::to_string),
    })
}

/// An `http://host:port/path` URL for the agent's own client. No TLS: every target is the app
/// inside the same VM, and a TLS stack would double the binary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl {
    pub host: String,
    pub port: u16,
    /// Path and query, always starting with `/`.
    pub path: String,
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "http://[{}]:{}{}", self.host, self.port, self.path)
        } else {
            write!(f, "http://{}:{}{}", self.host, self.port, self.path)
        }
    }
}

pub fn http_url(text: &str) -> Result<HttpUrl, String> {
    let rest = text
        .strip_prefix("http://")
        .ok_or_else(|| format!("\"{text}\" must start with http:// (the agent talks plain HTTP to the app inside the VM)"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let bad = || format!("\"{text}\" is not a URL of the form http://host:port/path");
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, rest) = v6.split_once(']').ok_or_else(bad)?;
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad());
        }
        let port = match rest {
            "" => None,
            r => Some(r.strip_prefix(':').ok_or_else(bad)?),
        };
        (h, port)
    } else {
        let (h, p) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        // A host name or an IPv4 address; anything else (brackets, '@', spaces) is not a host.
        if !h
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            return Err(bad());
        }
        (h, p)
    };
    let port = match port {
        Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad)?,
        None => 80,
    };
    if host.is_empty() || !path.bytes().all(|b| b.is_ascii_graphic() && b != b'#') {
        return Err(bad());
    }
    Ok(HttpUrl {
        host: host.to_string(),
        port,
        path: path.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("10ms").unwrap(), Duration::from_millis(10));
        assert_eq!(duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(duration("250us").unwrap(), Duration::from_micros(250));
        assert_eq!(duration(" 1h ").unwrap(), Duration::from_secs(3600));
        // Found by the values fuzzer: exact, not through f64.
        assert_eq!(
            duration("12222222222226µs").unwrap(),
            Duration::from_micros(12_222_222_222_226)
        );
        assert_eq!(duration(".5s").unwrap(), Duration::from_millis(500));
        for bad in [
            "10",
            "",
            "s",
            "ten s",
            "10 parsecs",
            "1e999s",
            "-1s",
            ".s",
            "1.2.3s",
            "99999999999999999999999h",
        ] {
            assert!(duration(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(format_duration(Duration::from_millis(800)), "800ms");
        assert_eq!(format_duration(Duration::from_secs(30)), "30s");
        assert_eq!(format_duration(Duration::from_micros(1500)), "1500us");
    }

    #[test]
    fn signals() {
        assert_eq!(signal("SIGTERM").unwrap(), Signal::SIGTERM);
        assert_eq!(signal("usr2").unwrap(), Signal::SIGUSR2);
        assert_eq!(signal("9").unwrap(), Signal::SIGKILL);
        assert!(signal("SIGFOO").is_err());
        assert!(signal("99").is_err());
    }

    #[test]
    fn status_sets() {
        let s = status_set("200-399").unwrap();
        assert!(s.contains(200) && s.contains(399) && !s.contains(404));
        let s = status_set("200,204, 300-302").unwrap();
        assert!(s.contains(204) && s.contains(301) && !s.contains(201));
        assert_eq!(s.to_string(), "200,204,300-302");
        for bad in ["", "abc", "399-200", "99", "600", "200-"] {
            assert!(status_set(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn users() {
        assert_eq!(
            user_spec("app").unwrap(),
            UserSpec {
                user: "app".into(),
                group: None
            }
        );
        assert_eq!(
            user_spec("1000:1000").unwrap().group.as_deref(),
            Some("1000")
        );
        for bad in ["", ":", "a:", "a b", "x/y", "1000:1000:1"] {
            assert!(user_spec(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn urls() {
        let u = http_url("http://127.0.0.1:8080/healthz?x=1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 8080, "/healthz?x=1")
        );
        let u = http_url("http://[::1]:81").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("::1", 81, "/"));
        assert_eq!(u.to_string(), "http://[::1]:81/");
        assert_eq!(http_url("http://localhost/x").unwrap().port, 80);
        for bad in [
            "https://a/",
            "127.0.0.1:80",
            "http://:80/",
            "http://a:0/",
            "http://a:x/",
            // Found by the values fuzzer: these did not survive a round trip.
            "http://1][::1]:80/",
            "http://[::1]x/",
            "http://a/\0x",
            "http://[zz]/",
            "http://a b/",
            "http://user@host/",
        ] {
            assert!(http_url(bad).is_err(), "{bad} accepted");
        }
    }
}
