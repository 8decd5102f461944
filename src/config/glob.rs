//! Shell-style patterns as Go's `path.Match` reads them, for the annotation allowlists of a runtime
//! handler (containerd's `pod_annotations` / `container_annotations` use the same syntax): `*` is any
//! run of characters but `/`, `?` one character but `/`, `[a-z]` / `[^a-z]` a class, `\` quotes the
//! next character. A pattern must match the whole name. This module only compares strings.

/// Why a pattern is malformed, for the configuration error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPattern(pub &'static str);

/// Checks a pattern's syntax (what `path.Match` reports as `ErrBadPattern`).
pub fn validate(pattern: &str) -> Result<(), BadPattern> {
    let p: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '\\' => {
                if i + 1 == p.len() {
                    return Err(BadPattern("ends with a lone '\\'"));
                }
                i += 2;
            }
            // Only the syntax matters here, not what the class matches.
            '[' => i = class_matches(&p, i + 1, '\0')?.1,
            _ => i += 1,
        }
    }
    Ok(())
}

/// Whether `name` matches `pattern` as a whole; a malformed pattern matches nothing.
pub fn matches(pattern: &str, name: &str) -> bool {
    if validate(pattern).is_err() {
        return false;
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    match_from(&p, &n)
}

fn match_from(p: &[char], n: &[char]) -> bool {
    let Some(&first) = p.first() else { return n.is_empty() };
    match first {
        '*' => {
            let rest = &p[1..];
            // Every split of the name's leading run without '/'.
            for skip in 0..=n.len() {
                if match_from(rest, &n[skip..]) {
                    return true;
                }
                if n.get(skip) == Some(&'/') {
                    break;
                }
            }
            false
        }
        '?' => n.first().is_some_and(|&c| c != '/') && match_from(&p[1..], &n[1..]),
        '[' => {
            let Some(&c) = n.first() else { return false };
            // Validated: the class is well formed.
            let Ok((matched, end)) = class_matches(p, 1, c) else { return false };
            matched && match_from(&p[end..], &n[1..])
        }
        '\\' => n.first() == p.get(1) && match_from(&p[2..], &n[1..]),
        c => n.first() == Some(&c) && match_from(&p[1..], &n[1..]),
    }
}

/// One character of a class at `i`, unquoted: the character and the index after it.
fn class_char(p: &[char], i: usize) -> Result<(char, usize), BadPattern> {
    match p.get(i) {
        None => Err(BadPattern("has an unterminated character class")),
        Some('-') | Some(']') => Err(BadPattern("has a '-' or ']' where a class character belongs")),
        Some('\\') => {
            p.get(i + 1).map(|&c| (c, i + 2)).ok_or(BadPattern("has an unterminated character class"))
        }
        Some(&c) => Ok((c, i + 1)),
    }
}

/// Whether the class whose body starts at `i` matches `c`, and the index after its ']'.
fn class_matches(p: &[char], mut i: usize, c: char) -> Result<(bool, usize), BadPattern> {
    let negated = p.get(i) == Some(&'^');
    if negated {
        i += 1;
    }
    let (mut matched, mut ranges) = (false, 0);
    loop {
        if p.get(i) == Some(&']') && ranges > 0 {
            return Ok((matched != negated, i + 1));
        }
        let (lo, next) = class_char(p, i)?;
        let (hi, next) = if p.get(next) == Some(&'-') { class_char(p, next + 1)? } else { (lo, next) };
        matched |= lo <= c && c <= hi;
        ranges += 1;
        i = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_like_go_path_match() {
        for (pattern, name, want) in [
            ("io.katacontainers.*", "io.katacontainers.config.hypervisor.kernel_params", true),
            ("io.katacontainers.*", "io.katacontainers", false),
            ("io.katacontainers.*", "io.katacontainers.x/y", false),
            ("*", "kubernetes.io/config.source", false),
            ("*/*", "kubernetes.io/config.source", true),
            ("*", "", true),
            ("a?c", "abc", true),
            ("a?c", "a/c", false),
            ("[a-c]x", "bx", true),
            ("[^a-c]x", "bx", false),
            ("[^a-c]x", "dx", true),
            ("[\\]]", "]", true),
            ("\\*", "*", true),
            ("\\*", "x", false),
            ("example.com/gpu", "example.com/gpu", true),
            ("example.com/gpu", "example.com/gpus", false),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
        ] {
            assert_eq!(matches(pattern, name), want, "{pattern:?} vs {name:?}");
        }
    }

    #[test]
    fn malformed_patterns_are_reported_and_match_nothing() {
        for bad in ["[", "[]", "[a-", "a\\", "[-a]", "[^]"] {
            assert!(validate(bad).is_err(), "{bad:?}");
            assert!(!matches(bad, "a"), "{bad:?}");
        }
        for good in ["*", "a[b-d]e", "io.kubernetes.cri.*", "\\[x\\]"] {
            assert_eq!(validate(good), Ok(()), "{good:?}");
        }
    }
}
