//! Server ACLs (`m.room.server_acl`, spec: client-server API, "Server Access Control Lists").
//!
//! A server is checked by its host name (any port is ignored): an IP literal is denied unless
//! `allow_ip_literals` (default true); then any `deny` glob denies; then it must match an
//! `allow` glob (a missing `allow` denies everyone). Globs know `*` and `?`.
//!
//! Written here rather than taken from a crate: the spec's globs are two wildcards over
//! case-insensitive host names, and a general glob crate would add path and brace rules the spec
//! does not have.

use serde_json::Value;

/// Whether `pattern` (with `*` and `?`) matches `text`, ignoring ASCII case.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_ascii_lowercase().chars().collect();
    let t: Vec<char> = text.to_ascii_lowercase().chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

fn host_of(server: &str) -> &str {
    if let Some(rest) = server.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match server.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => server,
    }
}

/// Whether the ACL `content` lets `server` take part in the room.
pub fn allows(content: &Value, server: &str) -> bool {
    let host = host_of(server);
    let is_ip = host.parse::<std::net::IpAddr>().is_ok();
    let allow_ip = content
        .get("allow_ip_literals")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    if is_ip && !allow_ip {
        return false;
    }
    let globs = |key: &str| -> Vec<&str> {
        content
            .get(key)
            .and_then(Value::as_array)
            .map(|list| list.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    };
    if globs("deny").iter().any(|g| glob_matches(g, host)) {
        return false;
    }
    globs("allow").iter().any(|g| glob_matches(g, host))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn globs() {
        for (p, t, m) in [
            ("*", "anything.example", true),
            ("*.example", "a.example", true),
            ("*.example", "example", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("EVIL.*", "evil.org", true),
            ("*b*c", "aabxxc", true),
            ("*b*c", "aabxx", false),
        ] {
            assert_eq!(glob_matches(p, t), m, "{p} {t}");
        }
    }

    #[test]
    fn acl_rules() {
        let acl = json!({"allow": ["*"], "deny": ["evil.example", "*.bad.example"],
            "allow_ip_literals": false});
        assert!(allows(&acl, "good.example:8448"));
        assert!(!allows(&acl, "evil.example"));
        assert!(!allows(&acl, "x.bad.example:443"));
        assert!(!allows(&acl, "127.0.0.1:8448"));
        assert!(!allows(&acl, "[::1]:8448"));
        assert!(allows(&json!({"allow": ["*"]}), "127.0.0.1:1"));
        assert!(!allows(&json!({}), "good.example"));
        assert!(allows(&json!({"allow": ["*.example"]}), "a.example"));
        assert!(!allows(&json!({"allow": ["*.example"]}), "a.org"));
    }
}
