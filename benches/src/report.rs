//! What the harnesses write into docs/BENCHMARKS.md: the machine, the date, and their
//! tables between markers, so the prose around them stays as written.

/// "2 vCPUs of <model>, Linux <release>".
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map_or("?", |m| m.trim_start_matches([' ', '\t', ':']));
    let cpus = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} vCPUs of {model}, Linux {}", kernel.trim())
}

/// Today's date (UTC), as `date -u +%F` prints it.
pub fn today() -> String {
    let out = std::process::Command::new("date").args(["-u", "+%F"]).output().expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Replaces what lies between `<!-- {name}:begin -->` and `<!-- {name}:end -->` in the
/// file at `path` with `body`.
pub fn write_between_markers(path: &str, name: &str, body: &str) {
    let (begin, end) = (format!("<!-- {name}:begin -->"), format!("<!-- {name}:end -->"));
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let (Some(b), Some(e)) = (text.find(&begin), text.find(&end)) else {
        panic!("{path} has no {begin} … {end} markers");
    };
    assert!(b < e, "{path}: {begin} after {end}");
    let updated = format!("{}{begin}\n{body}{}", &text[..b], &text[e..]);
    std::fs::write(path, updated).unwrap_or_else(|e| panic!("writing {path}: {e}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_marked_part_is_replaced() {
        let path = std::env::temp_dir().join(format!("vswitch-report-{}.md", std::process::id()));
        let path = path.to_str().unwrap();
        std::fs::write(path, "intro\n<!-- t:begin -->\nold\n<!-- t:end -->\nafter\n").unwrap();
        write_between_markers(path, "t", "new 1\nnew 2\n");
        write_between_markers(path, "t", "newer\n");
        let text = std::fs::read_to_string(path).unwrap();
        std::fs::remove_file(path).unwrap();
        assert_eq!(text, "intro\n<!-- t:begin -->\nnewer\n<!-- t:end -->\nafter\n");
    }
}
