//! What CNI plugins print, as berth reads it: ADD results (any spec version, converted to the
//! list's version the first byte picks, then read for the pod's addresses), VERSION answers, and
//! the error object or stderr of a failed plugin (stdout and stderr split at the first NUL).
//! No input may panic; a converted result says the list's version and converts to itself again;
//! the pod's addresses are addresses of the result.

#![no_main]

use berth::network::result::{
    PluginFailure, ResultView, convert, parse_add_output, parse_supported_versions,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0", "0.2.0", "", "1.0"];

fn add(stdout: &[u8], version: &str) {
    let Ok(result) = parse_add_output(stdout, version) else { return };
    assert_eq!(result.get("cniVersion"), Some(&Value::String(version.into())));
    // A cached result is converted again when it is read back.
    let again = convert(result.clone(), version).expect("a converted result converts");
    assert_eq!(again, result);
    let Ok(view) = ResultView::parse(&result) else { return };
    for ifname in ["eth0", ""] {
        for ip in view.pod_ips(ifname) {
            assert!(view.ips.iter().any(|c| c.address == ip));
        }
    }
    for ip in &view.ips {
        assert!(ip.prefix <= if ip.address.is_ipv4() { 32 } else { 128 });
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode & 3 {
        0 | 1 => add(rest, VERSIONS[usize::from(mode >> 2) % VERSIONS.len()]),
        2 => assert!(!parse_supported_versions(rest).is_empty()),
        _ => {
            let (stdout, stderr) = match rest.iter().position(|b| *b == 0) {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &[][..]),
            };
            let failure = PluginFailure::from_output(stdout, stderr, "exit status: 1");
            let _ = failure.is_gone();
            // A failure always says something, if only that the plugin said nothing.
            assert!(!failure.to_string().is_empty());
        }
    }
});
