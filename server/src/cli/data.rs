//! `berth export` and `berth import`: a workspace directory (/data by default) as an archive,
//! out to a file or stdout and in from a file or stdin, with a progress bar on a terminal.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use berth_api::v1 as pb;
use berth_api::v1::workspace_service_client::WorkspaceServiceClient;
use clap::ValueEnum;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt as _;
use tokio_stream::StreamExt as _;

use super::connect::Channel;
use super::describe;
use super::progress::TransferProgress;

/// Bytes per ImportData message.
const IMPORT_CHUNK_BYTES: usize = 1 << 20;

/// Archive format on the command line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// tar + gzip (.tar.gz)
    #[default]
    Gzip,
    /// tar + zstd (.tar.zst)
    Zstd,
}

impl Format {
    fn proto(self) -> pb::ArchiveFormat {
        match self {
            Format::Gzip => pb::ArchiveFormat::TarGzip,
            Format::Zstd => pb::ArchiveFormat::TarZstd,
        }
    }

    /// The format an archive's first bytes announce (gzip or zstd magic).
    fn sniff(head: &[u8]) -> Option<Self> {
        match head {
            [0x1f, 0x8b, ..] => Some(Format::Gzip),
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Some(Format::Zstd),
            _ => None,
        }
    }
}

/// Runs `berth export`: the archive goes to `output` (or stdout), the trailer is checked
/// against the bytes received, and a summary goes to stderr.
pub async fn export(
    channel: Channel,
    id: String,
    path: Option<String>,
    format: Format,
    output: Option<PathBuf>,
) -> Result<ExitCode, String> {
    if output.is_none() && std::io::stdout().is_terminal() {
        return Err("INVALID_ARGUMENT: the archive would go to the terminal; redirect stdout or pass -o FILE".into());
    }
    let mut client = WorkspaceServiceClient::new(channel);
    let request =
        pb::ExportDataRequest { workspace_id: id, format: format.proto().into(), path: path.unwrap_or_default() };
    let mut stream = client.export_data(request).await.map_err(describe)?.into_inner();
    let (mut sink, temporary): (Box<dyn std::io::Write>, Option<PathBuf>) = match &output {
        Some(path) => {
            // Written beside the target and renamed at the end: a failed export leaves no
            // partial archive under the name asked for.
            let temporary = path.with_file_name(format!(
                ".{}.berth-export",
                path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default()
            ));
            let file = std::fs::File::create(&temporary)
                .map_err(|err| format!("cannot create {}: {err}", temporary.display()))?;
            (Box::new(std::io::BufWriter::new(file)), Some(temporary))
        }
        None => (Box::new(std::io::stdout().lock()), None),
    };
    let cleanup = |temporary: &Option<PathBuf>| {
        if let Some(temporary) = temporary {
            let _ = std::fs::remove_file(temporary);
        }
    };
    let mut progress = TransferProgress::tree();
    progress.start_file("export");
    let mut digest = Sha256::new();
    let mut received: i64 = 0;
    let mut trailer = None;
    while let Some(message) = stream.next().await {
        let message = match message {
            Ok(message) => message,
            Err(status) => {
                progress.abandon();
                cleanup(&temporary);
                return Err(describe(status));
            }
        };
        match message.event {
            Some(pb::export_data_response::Event::Chunk(chunk)) => {
                digest.update(&chunk);
                received += chunk.len() as i64;
                if let Err(err) = sink.write_all(&chunk) {
                    progress.abandon();
                    cleanup(&temporary);
                    return Err(format!("writing the archive failed: {err}"));
                }
                progress.advance(chunk.len() as u64);
            }
            Some(pb::export_data_response::Event::Trailer(end)) => trailer = Some(end),
            None => {}
        }
    }
    sink.flush().map_err(|err| format!("writing the archive failed: {err}"))?;
    drop(sink);
    let sha256 = hex::encode(digest.finalize());
    let Some(trailer) = trailer.filter(|end| end.size_bytes == received && end.sha256 == sha256) else {
        progress.abandon();
        cleanup(&temporary);
        return Err(format!(
            "CHECKSUM_MISMATCH: the export ended without a matching trailer ({received} bytes, sha256 {sha256} received); retry"
        ));
    };
    if let (Some(temporary), Some(output)) = (&temporary, &output) {
        std::fs::rename(temporary, output).map_err(|err| format!("cannot rename to {}: {err}", output.display()))?;
    }
    progress.finish();
    eprintln!("exported {} entries, {} bytes, sha256 {}", trailer.entry_count, trailer.size_bytes, trailer.sha256);
    Ok(ExitCode::SUCCESS)
}

/// Options of `berth import`.
pub struct ImportOptions {
    pub id: String,
    /// A file, or `-` for stdin.
    pub input: String,
    pub path: Option<String>,
    /// None: sniffed from the archive's first bytes.
    pub format: Option<Format>,
    pub replace: bool,
    pub sha256: Option<String>,
}

/// Runs `berth import`: streams the archive with ImportData and prints what was extracted.
pub async fn import(channel: Channel, options: ImportOptions) -> Result<ExitCode, String> {
    let mut reader: Box<dyn tokio::io::AsyncRead + Unpin + Send> = if options.input == "-" {
        Box::new(tokio::io::stdin())
    } else {
        Box::new(
            tokio::fs::File::open(&options.input)
                .await
                .map_err(|err| format!("cannot open {}: {err}", options.input))?,
        )
    };
    let mut first = vec![0; IMPORT_CHUNK_BYTES];
    let filled =
        read_full(&mut reader, &mut first).await.map_err(|err| format!("reading {} failed: {err}", options.input))?;
    first.truncate(filled);
    let format = match options.format.or_else(|| Format::sniff(&first)) {
        Some(format) => format,
        None => return Err(format!("INVALID_ARGUMENT: {} is neither gzip nor zstd; pass --format", options.input)),
    };
    let header = pb::import_data_request::Header {
        workspace_id: options.id,
        format: format.proto().into(),
        path: options.path.unwrap_or_default(),
        replace: options.replace,
        sha256: options.sha256.unwrap_or_default(),
    };
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    let feeder = tokio::spawn(async move {
        let mut progress = TransferProgress::tree();
        let read: std::io::Result<TransferProgress> = async {
            progress.start_file("import");
            let message = |event| pb::ImportDataRequest { event: Some(event) };
            if sender.send(message(pb::import_data_request::Event::Header(header))).await.is_err() {
                return Ok(progress);
            }
            let mut chunk = first;
            loop {
                if chunk.is_empty() {
                    return Ok(progress);
                }
                progress.advance(chunk.len() as u64);
                if sender.send(message(pb::import_data_request::Event::Chunk(chunk.into()))).await.is_err() {
                    return Ok(progress);
                }
                let mut next = vec![0; IMPORT_CHUNK_BYTES];
                let filled = read_full(&mut reader, &mut next).await?;
                next.truncate(filled);
                chunk = next;
            }
        }
        .await;
        read
    });
    let mut client = WorkspaceServiceClient::new(channel);
    let answer = client.import_data(tokio_stream::wrappers::ReceiverStream::new(receiver)).await;
    let progress = feeder.await.map_err(|err| format!("the upload failed: {err}"))?;
    let progress: TransferProgress = match progress {
        Ok(progress) => progress,
        // A read error ends the stream early without its end: the server never extracts it.
        Err(err) => return Err(format!("reading {} failed: {err}; nothing was imported", options.input)),
    };
    match answer {
        Ok(response) => {
            progress.finish();
            let response = response.into_inner();
            eprintln!(
                "imported {} entries from {} bytes, sha256 {}",
                response.entry_count, response.size_bytes, response.sha256
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(status) => {
            progress.abandon();
            Err(describe(status))
        }
    }
}

/// Reads until `buffer` is full or the input ends; returns how many bytes it holds.
async fn read_full(
    reader: &mut (dyn tokio::io::AsyncRead + Unpin + Send),
    buffer: &mut [u8],
) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        let read = reader.read(&mut buffer[filled..]).await?;
        if read == 0 {
            break;
        }
        filled += read;
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_sniffed_from_their_magic_bytes() {
        assert_eq!(Format::sniff(&[0x1f, 0x8b, 8, 0]), Some(Format::Gzip));
        assert_eq!(Format::sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Some(Format::Zstd));
        assert_eq!(Format::sniff(b"ustar"), None);
        assert_eq!(Format::sniff(&[]), None);
    }
}
