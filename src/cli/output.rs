//! Shared output helpers: aligned tables for people, JSON for scripts.

use std::io::{ErrorKind, Write};

use serde::Serialize;

use crate::approvals::shown_up_to;

/// `print!` for a command's output; see [`write_out`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::output::write_out(format_args!($($arg)*))
    };
}

/// `println!` for a command's output; see [`write_out`].
macro_rules! outln {
    () => {
        $crate::cli::output::write_out(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::output::write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub(crate) use {out, outln};

/// Write to stdout. When its reader has gone (`seks … | head`), the command ends there with
/// the status a shell gives a command killed by SIGPIPE (141), as Unix tools do, rather than
/// panicking as `print!` does; any other failure to write ends it with an error.
pub fn write_out(args: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        if e.kind() == ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        eprintln!("error: cannot write the output: {e}");
        std::process::exit(1);
    }
}

/// Print rows as a table with aligned columns; without headers, just the rows. Cells are
/// printed with control and hiding characters escaped: some (a model name in the audit log)
/// are an agent's text, which must not drive the operator's terminal.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|c| shown_up_to(c, usize::MAX)).collect())
        .collect();
    let columns = rows.first().map_or(headers.len(), Vec::len);
    let mut widths: Vec<usize> = (0..columns)
        .map(|i| headers.get(i).map_or(0, |h| h.chars().count()))
        .collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        outln!("{}", padded.join("  ").trim_end());
    };
    if !headers.is_empty() {
        line(headers.to_vec());
    }
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Print a value as pretty JSON.
pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// An optional value for a table cell, `-` when absent.
pub fn dash(value: Option<&str>) -> String {
    value.unwrap_or("-").to_owned()
}
