//! Plain HTTP(S) downloads (ureq with rustls: no system TLS library), written
//! to a file in the stage's scratch folder while being hashed, with progress
//! in bytes. Only status 200 is accepted: a redirect is followed by the
//! client, anything else is an error naming the status and the URL.

use super::copy::copy_polling;
use super::digest::{Actual, Expected, Hashing};
use anyhow::{Context, bail};
use distillery_engine::Progress;
use std::io::BufWriter;
use std::path::Path;
use std::time::Duration;

/// Downloads `url` into `dest` and returns the digests of what arrived.
pub fn download(
    url: &str,
    dest: &Path,
    expected: &Expected,
    progress: &dyn Progress,
) -> anyhow::Result<Actual> {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(30))
        .timeout_read(Duration::from_secs(120))
        .user_agent(concat!("distillery/", env!("CARGO_PKG_VERSION")))
        .build();
    let response = match agent.get(url).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            bail!("HTTP status {code} {} for {url}", r.status_text())
        }
        Err(ureq::Error::Transport(t)) => bail!("cannot download {url}: {t}"),
    };
    if response.status() != 200 {
        bail!(
            "HTTP status {} {} for {url} (expected 200)",
            response.status(),
            response.status_text()
        );
    }
    let total: Option<u64> = response
        .header("Content-Length")
        .and_then(|v| v.trim().parse().ok());
    progress.set_total(total.unwrap_or(0), "bytes");
    progress.log(&format!(
        "downloading {url}{}",
        total.map(|t| format!(" ({t} bytes)")).unwrap_or_default()
    ));
    let file =
        std::fs::File::create(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    let mut writer = BufWriter::new(file);
    let mut reader = response.into_reader();
    let mut hashing = Hashing::for_expected(expected);
    let mut position = 0u64;
    let copied = copy_polling(&mut reader, &mut writer, |chunk| {
        hashing.update(chunk);
        position += chunk.len() as u64;
        progress.set_position(position);
    })
    .with_context(|| format!("download of {url} failed after {position} bytes"))?;
    if let Some(total) = total
        && copied != total
    {
        bail!("download of {url} ended after {copied} of {total} bytes");
    }
    writer
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    Ok(hashing.finish())
}
