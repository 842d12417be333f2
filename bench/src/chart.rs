//! A bar chart of the in-process table, as SVG: the added time per request
//! of each configuration and workload, on a log scale.

use crate::inprocess::{Added, WORKLOADS};

pub fn inprocess(results: &[Added]) -> String {
    let mut names: Vec<&str> = Vec::new();
    for r in results {
        if r.config != "bare axum" && !names.contains(&r.config) {
            names.push(r.config);
        }
    }
    let colors = ["#3465a4", "#73d216", "#f57900"];
    let (left, row, bar) = (300.0, 54.0, 14.0);
    let width = 900.0;
    let height = 70.0 + row * names.len() as f64 + 40.0;
    // log10 scale from 0.01 µs to the largest value.
    let max = results
        .iter()
        .map(|r| r.median / 1000.0)
        .fold(1.0_f64, f64::max);
    let (lo, hi) = (-2.0_f64, max.log10().ceil());
    let x = |us: f64| left + (us.max(0.01).log10() - lo) / (hi - lo) * (width - left - 40.0);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"22\" font-size=\"15\" font-weight=\"bold\">Added time per request over bare Axum (µs, log scale; lower is better)</text>\n"
    );
    for (i, workload) in WORKLOADS.iter().enumerate() {
        let label = match *workload {
            "rmw" => "read-modify-write",
            "read" => "read-only",
            _ => "untouched route",
        };
        svg += &format!(
            "<rect x=\"{}\" y=\"34\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"45\">{label}</text>\n",
            10.0 + 170.0 * i as f64,
            colors[i],
            26.0 + 170.0 * i as f64
        );
    }
    let mut tick = lo;
    while tick <= hi {
        let value = 10f64.powf(tick);
        let tx = x(value);
        svg += &format!(
            "<line x1=\"{tx:.1}\" y1=\"60\" x2=\"{tx:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/><text x=\"{tx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
            height - 30.0,
            height - 14.0,
            if value < 1.0 {
                format!("{value}")
            } else {
                format!("{value:.0}")
            }
        );
        tick += 1.0;
    }
    for (j, name) in names.iter().enumerate() {
        let top = 66.0 + row * j as f64;
        svg += &format!(
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{name}</text>\n",
            left - 8.0,
            top + 24.0
        );
        for (i, workload) in WORKLOADS.iter().enumerate() {
            let r = results
                .iter()
                .find(|r| r.config == *name && r.workload == *workload)
                .unwrap();
            let us = r.median / 1000.0;
            let y = top + bar * i as f64;
            svg += &format!(
                "<rect x=\"{left}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\">{us:.2}</text>\n",
                (x(us) - left).max(1.0),
                bar - 2.0,
                colors[i],
                x(us) + 4.0,
                y + bar - 4.0
            );
        }
    }
    svg + "</svg>\n"
}
