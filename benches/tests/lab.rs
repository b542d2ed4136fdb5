//! `hsmpool-bench lab` end to end, with windows too short to mean anything: every child runs,
//! every line is printed, and the JSON and both plots are written and readable. No speed is
//! asserted here (speeds are the lab's output, not its tests).

use std::process::Command;

/// The width and height in a PNG's IHDR chunk, if `b` starts like a PNG.
fn png_size(b: &[u8]) -> Option<(u32, u32)> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if !b.starts_with(SIGNATURE) || b.get(12..16)? != b"IHDR" {
        return None;
    }
    let w = u32::from_be_bytes(b.get(16..20)?.try_into().ok()?);
    let h = u32::from_be_bytes(b.get(20..24)?.try_into().ok()?);
    Some((w, h))
}

#[test]
fn the_lab_runs_and_writes_its_json_and_plots() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("lab");
    let run = Command::new(env!("CARGO_BIN_EXE_hsmpool-bench"))
        .args(["lab", "--seconds-per-step", "0.05", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stdout}\n{stderr}");
    for key in ["[1]", "[2a]", "[2b]", "[3]", "[4]", "[5]", "[6]"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("no line {key} in\n{stdout}"));
        assert!(line.contains("seed: no randomness"), "{line}");
        assert!(line.contains("ratio "), "{line}");
        assert!(
            line.contains("| pass") || line.contains("| MISS"),
            "a verdict: {line}"
        );
    }
    assert!(stdout.contains(&dir.display().to_string()), "{stdout}");

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("lab.json")).unwrap()).unwrap();
    let lines = json["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 7);
    for l in lines {
        assert!(l["name"].is_string() && l["config"].is_string(), "{l}");
        assert!(l["pass"].is_boolean(), "{l}");
        let ms = l["measurements"].as_array().unwrap();
        assert_eq!(ms.len(), 2, "{l}");
        for m in ms {
            assert!(
                m["ops_per_s"].as_f64().unwrap() > 0.0,
                "every side did work: {l}"
            );
            assert_eq!(m["failures"], 0, "{l}");
            assert!(
                m["checked"].as_u64().unwrap() >= 1,
                "outputs were checked: {l}"
            );
        }
        assert!(l["ratio"].as_f64().unwrap() > 0.0, "{l}");
    }

    let svg = std::fs::read_to_string(dir.join("lab.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(
        svg.contains("login once / login per op"),
        "the bars are labelled"
    );
    let png = std::fs::read(dir.join("lab.png")).unwrap();
    assert_eq!(png_size(&png), Some((1400, 640)));
}
