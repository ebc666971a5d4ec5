//! The Prometheus text exposition format (version 0.0.4).

use std::fmt::Write;

use super::families::{Family, Kind};

/// Writes every family with its `# HELP` and `# TYPE` lines.
pub(super) fn write(families: &[Family]) -> String {
    let mut out = String::with_capacity(4096);
    for family in families {
        let kind = match family.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let name = &family.name;
        // Writing to a String cannot fail.
        let _ = writeln!(out, "# HELP {name} {}", family.help);
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for sample in &family.samples {
            out.push_str(name);
            if !sample.labels.is_empty() {
                out.push('{');
                for (n, (key, value)) in sample.labels.iter().enumerate() {
                    if n > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{key}=\"{}\"", escape(value));
                }
                out.push('}');
            }
            let _ = writeln!(out, " {}", sample.value);
        }
    }
    out
}

/// A label value with `\`, `"` and newlines escaped, as the format asks.
fn escape(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return value.into();
    }
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .into()
}
