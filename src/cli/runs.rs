//! `tlab runs` and `tlab compare`: earlier runs read back, as the library's
//! tables print them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::bail;

use tlab::run::history::{self, RunSummary};

/// `tlab runs DIR`.
pub fn runs(dir: &Path) -> anyhow::Result<ExitCode> {
    let runs = history::list(dir)?;
    if runs.is_empty() {
        println!("no runs in {}", tlab::util::paths::shown(dir).display());
    } else {
        print!("{}", history::runs_table(&runs).text());
    }
    Ok(ExitCode::SUCCESS)
}

/// `tlab compare RUN RUN…`: the metrics and recipe diffs printed, compare.png
/// and compare.html written to `output`.
pub fn compare(dirs: &[PathBuf], output: &Path) -> anyhow::Result<ExitCode> {
    if !output.is_dir() {
        bail!("{}: the output folder does not exist", tlab::util::paths::shown(output).display());
    }
    let runs: Vec<RunSummary> = dirs.iter().map(|d| RunSummary::read(d)).collect::<tlab::Result<_>>()?;
    print!("{}", history::compare_table(&runs).text());
    for r in &runs[1..] {
        println!("\nrecipe {} → {}:", runs[0].name, r.name);
        match history::diff_table(runs[0].recipe.as_deref(), r.recipe.as_deref()) {
            Some(t) if t.rows.is_empty() => println!("  same recipe"),
            Some(t) => {
                for row in &t.rows {
                    println!("  {}: {} → {}", row.cells[0], row.cells[1], row.cells[2]);
                }
            }
            None => println!("  {}", history::NO_RECIPE),
        }
    }
    let chart = tlab::present::views::CompareChart {
        runs: runs.iter().map(|r| (r.name.clone(), r.history.iter().map(|(_, e)| e.clone()).collect())).collect(),
    };
    let png = chart.to_png();
    tlab::fs::atomic_write(&output.join("compare.png"), &tlab::present::views::png_bytes(&png)?)?;
    tlab::fs::atomic_write(&output.join("compare.html"), history::compare_html(&runs, &png)?.as_bytes())?;
    println!(
        "\nwrote {} and {}",
        tlab::util::paths::shown(&output.join("compare.png")).display(),
        tlab::util::paths::shown(&output.join("compare.html")).display()
    );
    Ok(ExitCode::SUCCESS)
}
