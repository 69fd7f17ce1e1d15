//! Running helper programs and reporting their failures.

use std::process::Command;

use crate::{Result, TestSupportError};

/// Runs `command`, returning stdout; an error carries stderr.
pub(crate) fn run(command: &mut Command) -> Result<Vec<u8>> {
    let program = command.get_program().to_string_lossy().into_owned();
    let described = format!("{command:?}");
    let output = command.output().map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            TestSupportError::MissingProgram {
                program: program.clone(),
                source,
            }
        } else {
            TestSupportError::Io {
                what: format!("running {described}"),
                source,
            }
        }
    })?;
    if !output.status.success() {
        return Err(TestSupportError::Command {
            command: described,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(output.stdout)
}
