//! FilesystemService calls that take more than one request: walking a directory tree page by
//! page, and uploading a file as a client stream.

use std::collections::VecDeque;

use berth_api::v1 as pb;
use berth_api::v1::filesystem_service_client::FilesystemServiceClient;
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::sync::mpsc;

use super::connect::Channel;
use super::describe;
use super::paths;

/// Bytes per WriteFile message (the server reads at most 1 MiB per ReadFile message too).
pub const CHUNK_BYTES: usize = 1 << 20;

/// The deepest ListDir lists at once; deeper directories are listed on their own.
const MAX_LIST_DEPTH: u32 = 32;

const PAGE_SIZE: i32 = 1000;

/// One entry of a walk, with its path relative to the walked directory (`sub/notes.txt`).
pub struct Listed {
    pub relative: String,
    pub entry: pb::EntryInfo,
}

/// The entries below a directory, depth-first with siblings sorted by name, fetched a page at a
/// time (memory stays flat for any tree). A recursive walk descends to any depth: a directory at
/// ListDir's depth limit is listed on its own before the walk goes on.
pub struct RemoteWalk {
    client: FilesystemServiceClient<Channel>,
    workspace_id: String,
    root: String,
    recursive: bool,
    /// The directories being listed, innermost last.
    listings: Vec<Listing>,
}

struct Listing {
    path: String,
    entries: VecDeque<pb::EntryInfo>,
    /// The token of the next page; `None` once the last page came.
    next_page: Option<String>,
}

impl Listing {
    fn new(path: String) -> Self {
        Self { path, entries: VecDeque::new(), next_page: Some(String::new()) }
    }
}

impl RemoteWalk {
    /// Walks `root`, an absolute path as the server writes it (a Stat's `entry.path`), so that
    /// listed paths start with it.
    pub fn new(client: FilesystemServiceClient<Channel>, workspace_id: String, root: String, recursive: bool) -> Self {
        let listings = vec![Listing::new(root.clone())];
        Self { client, workspace_id, root, recursive, listings }
    }

    /// The next entry, or `None` after the last.
    pub async fn next(&mut self) -> Result<Option<Listed>, String> {
        loop {
            let Some(listing) = self.listings.last_mut() else {
                return Ok(None);
            };
            if let Some(entry) = listing.entries.pop_front() {
                let below_listing = paths::depth(&paths::relative_to(&listing.path, &entry.path)?);
                let relative = paths::relative_to(&self.root, &entry.path)?;
                if self.recursive
                    && entry.r#type() == pb::FileType::Directory
                    && below_listing >= MAX_LIST_DEPTH as usize
                {
                    self.listings.push(Listing::new(entry.path.clone()));
                }
                return Ok(Some(Listed { relative, entry }));
            }
            let Some(page_token) = listing.next_page.take() else {
                self.listings.pop();
                continue;
            };
            let request = pb::ListDirRequest {
                workspace_id: self.workspace_id.clone(),
                path: listing.path.clone(),
                depth: if self.recursive { MAX_LIST_DEPTH } else { 1 },
                page_size: PAGE_SIZE,
                page_token,
            };
            let page = self.client.list_dir(request).await.map_err(describe)?.into_inner();
            listing.entries = page.entries.into();
            listing.next_page = (!page.next_page_token.is_empty()).then_some(page.next_page_token);
        }
    }
}

/// What the upload stream carries: messages, then an explicit end. A stream whose sender goes
/// away without the end (a failed read, Ctrl-C) never ends cleanly, so the server never commits a
/// partial file: the call is dropped, or the connection closes with the process.
enum Upload {
    Message(pb::WriteFileRequest),
    End,
}

/// Uploads `source` with WriteFile under `header`, calling `on_chunk` with each chunk's size;
/// returns the written file's description. `shown` names the source in error messages.
pub async fn write_file(
    client: &mut FilesystemServiceClient<Channel>,
    header: pb::write_file_request::Header,
    source: impl AsyncRead + Unpin,
    shown: &str,
    on_chunk: impl FnMut(u64),
) -> Result<pb::EntryInfo, String> {
    let (sender, receiver) = mpsc::channel::<Upload>(4);
    let requests = futures::stream::unfold(receiver, |mut receiver| async move {
        match receiver.recv().await {
            Some(Upload::Message(message)) => Some((message, receiver)),
            Some(Upload::End) => None,
            None => std::future::pending().await,
        }
    });
    let call = client.write_file(requests);
    tokio::pin!(call);
    let feed = feed_upload(sender, header, source, shown, on_chunk);
    tokio::pin!(feed);
    let mut fed = false;
    loop {
        tokio::select! {
            response = &mut call => {
                return response.map(|response| response.into_inner().entry.unwrap_or_default()).map_err(describe);
            }
            result = &mut feed, if !fed => {
                result?;
                fed = true;
            }
        }
    }
}

async fn feed_upload(
    sender: mpsc::Sender<Upload>,
    header: pb::write_file_request::Header,
    mut source: impl AsyncRead + Unpin,
    shown: &str,
    mut on_chunk: impl FnMut(u64),
) -> Result<(), String> {
    use pb::write_file_request::Event;
    let header = Upload::Message(pb::WriteFileRequest { event: Some(Event::Header(header)) });
    // A send fails only when the call has ended: its status says why.
    if sender.send(header).await.is_err() {
        return Ok(());
    }
    loop {
        let mut chunk = vec![0u8; CHUNK_BYTES];
        let filled = fill(&mut source, &mut chunk).await.map_err(|err| format!("cannot read {shown}: {err}"))?;
        if filled == 0 {
            break;
        }
        chunk.truncate(filled);
        let message = Upload::Message(pb::WriteFileRequest { event: Some(Event::Chunk(chunk.into())) });
        if sender.send(message).await.is_err() {
            return Ok(());
        }
        on_chunk(filled as u64);
        if filled < CHUNK_BYTES {
            break;
        }
    }
    let _ = sender.send(Upload::End).await;
    Ok(())
}

/// Reads until `buffer` is full or the source ends; returns the bytes read.
async fn fill(source: &mut (impl AsyncRead + Unpin), buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        let read = source.read(&mut buffer[filled..]).await?;
        if read == 0 {
            break;
        }
        filled += read;
    }
    Ok(filled)
}
