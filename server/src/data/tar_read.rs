//! Reading a tar stream entry by entry, holding no more than a bounded amount of what the
//! archive claims.
//!
//! The tar crate's reader is not used for extraction because it believes the archive: it reads a
//! GNU long name or a pax header of any size into memory, and expands a sparse file's map of
//! any length into a list before it returns the entry. An archive comes from a client (import)
//! or from disk, so each of those is a way to exhaust berth's memory with a few compressed
//! megabytes. This reader decodes fields with the tar crate's [`Header`], and bounds:
//! a long name or long link to [`MAX_LONG_NAME_BYTES`], a pax header to [`MAX_PAX_BYTES`],
//! a sparse map to [`MAX_SPARSE_REGIONS`]; a global pax header is skipped unread.
//!
//! It reads what GNU tar and the tar crate write: v7, ustar and GNU headers (checksums checked),
//! GNU long names and links, pax headers (`path`, `linkpath`, `size`, `uid`, `gid`, `mtime`;
//! other keys are ignored), and sparse files in the old GNU format (`S` entries and their
//! extension blocks, what berth writes) and in GNU's pax format 1.0 (GNU tar's default for pax
//! archives). A sparse map is checked before any of its data is read: regions in order, not
//! overlapping, inside the file, their lengths adding up to the bytes stored.

use std::borrow::Cow;
use std::io::{self, BufRead, BufReader, Read};

use tar::{EntryType, GnuExtSparseHeader, GnuSparseHeader, Header};

use super::MAX_SPARSE_REGIONS;

const BLOCK: u64 = 512;
/// The largest GNU long name or long link read: far more than any path extraction accepts, so
/// a path over that limit still gets its precise error.
const MAX_LONG_NAME_BYTES: u64 = 64 * 1024;
/// The largest pax extended header read (paths, numbers, and ignored keys such as xattrs).
const MAX_PAX_BYTES: u64 = 1024 * 1024;

/// One run of data in a sparse file: `len` bytes at `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Region {
    pub offset: u64,
    pub len: u64,
}

/// Where a sparse file's stored bytes go: its regions, back to back in the archive; everything
/// else up to `real_size` is a hole.
#[derive(Debug)]
pub(crate) struct SparseMap {
    pub real_size: u64,
    pub regions: Vec<Region>,
}

/// One entry: its header fields with the extensions before it applied.
#[derive(Debug)]
pub(crate) struct TarEntry {
    pub kind: EntryType,
    pub path: Vec<u8>,
    /// A link's target; empty when the entry has none.
    pub link: Vec<u8>,
    pub mode: u32,
    /// `None` when the field is blank or malformed: the owner is then whoever extracts.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Seconds since the epoch.
    pub mtime: i64,
    /// `Some` for a sparse file: the data read through [`TarReader::data`] is its regions.
    pub sparse: Option<SparseMap>,
}

/// Why reading the archive stopped.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// Reading or decompressing the input failed, or it ended early.
    Input(io::Error),
    /// The archive is not well formed, or claims more than berth holds; the message says which
    /// entry or byte offset, and why.
    Malformed(String),
}

impl From<io::Error> for ReadError {
    fn from(err: io::Error) -> Self {
        Self::Input(err)
    }
}

/// Extension headers seen before the entry they describe.
#[derive(Default)]
struct Extensions {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    path: Option<Vec<u8>>,
    link_path: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<i64>,
    sparse_major: Option<u64>,
    sparse_minor: Option<u64>,
    sparse_name: Option<Vec<u8>>,
    sparse_real_size: Option<u64>,
    /// Keys of GNU's older pax sparse formats (0.0, 0.1), which are refused.
    sparse_legacy: bool,
}

impl Extensions {
    fn any(&self) -> bool {
        self.long_name.is_some() || self.long_link.is_some() || self.pax_seen()
    }

    fn pax_seen(&self) -> bool {
        self.path.is_some()
            || self.link_path.is_some()
            || self.size.is_some()
            || self.uid.is_some()
            || self.gid.is_some()
            || self.mtime.is_some()
            || self.sparse_major.is_some()
            || self.sparse_legacy
    }

    /// Applies the records of a pax extended header (`"<len> <key>=<value>\n"` each).
    fn parse_pax(&mut self, data: &[u8], at: u64) -> Result<(), ReadError> {
        let bad = |what: &str| ReadError::Malformed(format!("the pax header at byte {at} of the archive {what}"));
        let mut rest = data;
        // Some writers pad the header's data with NULs.
        while rest.first().is_some_and(|byte| *byte != 0) {
            let space =
                rest.iter().position(|byte| *byte == b' ').ok_or_else(|| bad("has a record without a length"))?;
            let len: usize = std::str::from_utf8(&rest[..space])
                .ok()
                .and_then(|len| len.parse().ok())
                .ok_or_else(|| bad("has a record with a malformed length"))?;
            if len <= space + 1 || len > rest.len() || rest[len - 1] != b'\n' {
                return Err(bad("has a record whose length does not match it"));
            }
            let record = &rest[space + 1..len - 1];
            let equals = record.iter().position(|byte| *byte == b'=').ok_or_else(|| bad("has a record without `=`"))?;
            self.apply(&record[..equals], &record[equals + 1..])
                .map_err(|key| bad(&format!("has a malformed {key}")))?;
            rest = &rest[len..];
        }
        Ok(())
    }

    /// Records one pax key; returns the key as an error when its value is malformed.
    fn apply(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        let number = || -> Result<u64, String> {
            std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| String::from_utf8_lossy(key).into_owned())
        };
        // An empty value unsets a key (POSIX); here it leaves the header's own field in force.
        let bytes = || (!value.is_empty()).then(|| value.to_vec());
        match key {
            b"path" => self.path = bytes(),
            b"linkpath" => self.link_path = bytes(),
            b"size" => self.size = Some(number()?),
            b"uid" => self.uid = Some(number()?),
            b"gid" => self.gid = Some(number()?),
            b"mtime" => self.mtime = Some(parse_seconds(value).ok_or_else(|| "mtime".to_owned())?),
            b"GNU.sparse.major" => self.sparse_major = Some(number()?),
            b"GNU.sparse.minor" => self.sparse_minor = Some(number()?),
            b"GNU.sparse.name" => self.sparse_name = bytes(),
            b"GNU.sparse.realsize" => self.sparse_real_size = Some(number()?),
            _ if key.starts_with(b"GNU.sparse.") => self.sparse_legacy = true,
            _ => {}
        }
        Ok(())
    }
}

/// The whole seconds of a pax time (`"1700000000.123"`, `"-5"`).
fn parse_seconds(value: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(value).ok()?;
    let whole = text.split('.').next()?;
    match whole {
        "" | "-" => Some(0),
        _ => whole.parse().ok(),
    }
}

/// Reads entries from a tar stream; see the module comment.
pub(crate) struct TarReader<R> {
    inner: BufReader<R>,
    /// Bytes of the current entry's data not read yet.
    left: u64,
    /// Zeros after the current entry's data, up to the next block.
    padding: u64,
    /// Bytes read from the (uncompressed) stream, for messages.
    offset: u64,
    ended: bool,
}

impl<R: Read> TarReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self { inner: BufReader::with_capacity(64 * 1024, inner), left: 0, padding: 0, offset: 0, ended: false }
    }

    /// The rest of the input after the end of the archive.
    pub(crate) fn into_inner(self) -> BufReader<R> {
        self.inner
    }

    /// The current entry's data: a regular file's content, or a sparse file's regions.
    pub(crate) fn data(&mut self) -> EntryData<'_, R> {
        EntryData { reader: self }
    }

    /// The next entry, skipping what the caller did not read of the current one; `None` at the
    /// end of the archive.
    pub(crate) fn next_entry(&mut self) -> Result<Option<TarEntry>, ReadError> {
        self.skip(self.left.saturating_add(self.padding))?;
        self.left = 0;
        self.padding = 0;
        let mut extensions = Extensions::default();
        loop {
            let at = self.offset;
            let Some(block) = self.read_header()? else {
                if extensions.any() {
                    return Err(ReadError::Malformed(
                        "the archive ends after an extension header, without the entry it describes".to_owned(),
                    ));
                }
                return Ok(None);
            };
            let header = Header::from_byte_slice(&block);
            if !checksum_matches(&block) {
                return Err(ReadError::Malformed(format!(
                    "the header at byte {at} of the archive has a wrong checksum"
                )));
            }
            let size = header.entry_size().map_err(|err| malformed_at(at, &err))?;
            match header.entry_type() {
                EntryType::GNULongName => {
                    extensions.long_name = Some(self.read_extension(size, MAX_LONG_NAME_BYTES, "GNU long name", at)?);
                }
                EntryType::GNULongLink => {
                    extensions.long_link = Some(self.read_extension(size, MAX_LONG_NAME_BYTES, "GNU long link", at)?);
                }
                EntryType::XHeader => {
                    let data = self.read_extension(size, MAX_PAX_BYTES, "pax header", at)?;
                    extensions.parse_pax(&data, at)?;
                }
                EntryType::XGlobalHeader => self.skip(size.saturating_add(padding(size)))?,
                kind => return self.entry(header, kind, size, extensions).map(Some),
            }
        }
    }

    fn entry(
        &mut self,
        header: &Header,
        kind: EntryType,
        size: u64,
        extensions: Extensions,
    ) -> Result<TarEntry, ReadError> {
        let mut path =
            extensions.path.or(extensions.long_name.map(trim_nuls)).unwrap_or_else(|| header.path_bytes().into_owned());
        let link = extensions
            .link_path
            .or(extensions.long_link.map(trim_nuls))
            .unwrap_or_else(|| header.link_name_bytes().map(Cow::into_owned).unwrap_or_default());
        let mode = header.mode().map_err(|err| malformed_entry(&path, &err))?;
        let uid = extensions.uid.or_else(|| header.uid().ok()).and_then(|uid| u32::try_from(uid).ok());
        let gid = extensions.gid.or_else(|| header.gid().ok()).and_then(|gid| u32::try_from(gid).ok());
        let mtime = match extensions.mtime {
            Some(mtime) => mtime,
            None => i64::try_from(header.mtime().map_err(|err| malformed_entry(&path, &err))?).unwrap_or(i64::MAX),
        };
        let stored = extensions.size.unwrap_or(size);
        self.left = stored;
        self.padding = padding(stored);
        let sparse = if kind == EntryType::GNUSparse {
            Some(self.gnu_sparse_map(header, &path)?)
        } else if extensions.sparse_major.is_some() || extensions.sparse_legacy {
            let version = (extensions.sparse_major, extensions.sparse_minor);
            if version != (Some(1), Some(0)) {
                return Err(ReadError::Malformed(format!(
                    "archive entry {} is a sparse file in one of GNU's pax formats 0.x, which berth does not read; create the archive with GNU tar's default sparse format (1.0)",
                    shown(&path)
                )));
            }
            let missing = |key: &str| {
                ReadError::Malformed(format!(
                    "archive entry {} is a sparse file without GNU.sparse.{key}",
                    shown(&path)
                ))
            };
            let real_size = extensions.sparse_real_size.ok_or_else(|| missing("realsize"))?;
            let name = extensions.sparse_name.ok_or_else(|| missing("name"))?;
            let map = self.pax_sparse_map(real_size, &name)?;
            path = name;
            Some(map)
        } else {
            None
        };
        if let Some(map) = &sparse {
            check_map(map, self.left, &path)?;
        }
        Ok(TarEntry { kind, path, link, mode, uid, gid, mtime, sparse })
    }

    /// The map of an old-GNU sparse entry: four regions in its header, then extension blocks
    /// of 21 while the previous one says more follow.
    fn gnu_sparse_map(&mut self, header: &Header, path: &[u8]) -> Result<SparseMap, ReadError> {
        let gnu = header.as_gnu().ok_or_else(|| {
            ReadError::Malformed(format!("archive entry {} is a GNU sparse file without a GNU header", shown(path)))
        })?;
        let real_size = gnu.real_size().map_err(|err| malformed_entry(path, &err))?;
        let mut regions = Vec::new();
        add_regions(&mut regions, &gnu.sparse, path)?;
        let mut extended = gnu.is_extended();
        while extended {
            let mut block = GnuExtSparseHeader::new();
            self.read_exact(block.as_mut_bytes())?;
            add_regions(&mut regions, block.sparse(), path)?;
            extended = block.is_extended();
        }
        Ok(SparseMap { real_size, regions })
    }

    /// The map of a pax 1.0 sparse entry: at the start of its data, decimal numbers one a line
    /// (the count, then offset and length of each region), padded to a block.
    fn pax_sparse_map(&mut self, real_size: u64, path: &[u8]) -> Result<SparseMap, ReadError> {
        let mut consumed = 0;
        let count = self.map_number(&mut consumed, path)?;
        if count > MAX_SPARSE_REGIONS as u64 {
            return Err(too_many_regions(path));
        }
        let mut regions = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let offset = self.map_number(&mut consumed, path)?;
            let len = self.map_number(&mut consumed, path)?;
            regions.push(Region { offset, len });
        }
        let pad = padding(consumed);
        if pad > self.left {
            return Err(malformed_map(path, "is longer than the entry"));
        }
        self.skip(pad)?;
        self.left -= pad;
        Ok(SparseMap { real_size, regions })
    }

    fn map_number(&mut self, consumed: &mut u64, path: &[u8]) -> Result<u64, ReadError> {
        let mut value: u64 = 0;
        let mut digits = 0;
        loop {
            if self.left == 0 {
                return Err(malformed_map(path, "is longer than the entry"));
            }
            let mut byte = [0u8];
            self.read_exact(&mut byte)?;
            self.left -= 1;
            *consumed += 1;
            match byte[0] {
                b'\n' if digits > 0 => return Ok(value),
                digit @ b'0'..=b'9' => {
                    digits += 1;
                    value = value
                        .checked_mul(10)
                        .and_then(|v| v.checked_add(u64::from(digit - b'0')))
                        .ok_or_else(|| malformed_map(path, "has a number too large"))?;
                }
                _ => return Err(malformed_map(path, "is not one decimal number a line")),
            }
        }
    }

    /// Reads an extension header's data (at most `max` bytes) and skips its padding.
    fn read_extension(&mut self, size: u64, max: u64, what: &str, at: u64) -> Result<Vec<u8>, ReadError> {
        if size > max {
            return Err(ReadError::Malformed(format!(
                "the {what} at byte {at} of the archive is {size} bytes, more than the {max} berth reads"
            )));
        }
        let mut data = vec![0; size as usize];
        self.read_exact(&mut data)?;
        self.skip(padding(size))?;
        Ok(data)
    }

    /// The next header block; `None` at the end of the archive (a zero block, or the input's end
    /// at a block boundary, which some writers leave).
    fn read_header(&mut self) -> Result<Option<[u8; BLOCK as usize]>, ReadError> {
        if self.ended {
            return Ok(None);
        }
        let mut block = [0u8; BLOCK as usize];
        if self.inner.fill_buf()?.is_empty() {
            self.ended = true;
            return Ok(None);
        }
        self.read_exact(&mut block)?;
        if block.iter().all(|byte| *byte == 0) {
            self.ended = true;
            return Ok(None);
        }
        Ok(Some(block))
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), ReadError> {
        self.inner.read_exact(buf).map_err(ended_early)?;
        self.offset += buf.len() as u64;
        Ok(())
    }

    fn skip(&mut self, len: u64) -> Result<(), ReadError> {
        let skipped = io::copy(&mut (&mut self.inner).take(len), &mut io::sink())?;
        self.offset += skipped;
        if skipped < len {
            return Err(ended_early(io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(())
    }
}

/// The current entry's data; see [`TarReader::data`]. Fails if the input ends before it does.
pub(crate) struct EntryData<'a, R> {
    reader: &'a mut TarReader<R>,
}

impl<R: Read> Read for EntryData<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let reader = &mut *self.reader;
        if reader.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(reader.left).unwrap_or(usize::MAX));
        let read = reader.inner.read(&mut buf[..want])?;
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ends in the middle of an entry's data",
            ));
        }
        reader.left -= read as u64;
        reader.offset += read as u64;
        Ok(read)
    }
}

fn add_regions(regions: &mut Vec<Region>, slots: &[GnuSparseHeader], path: &[u8]) -> Result<(), ReadError> {
    for slot in slots.iter().filter(|slot| !slot.is_empty()) {
        if regions.len() == MAX_SPARSE_REGIONS {
            return Err(too_many_regions(path));
        }
        let offset = slot.offset().map_err(|err| malformed_entry(path, &err))?;
        let len = slot.length().map_err(|err| malformed_entry(path, &err))?;
        regions.push(Region { offset, len });
    }
    Ok(())
}

/// Checks a sparse map against the file's size and the bytes the entry stores.
fn check_map(map: &SparseMap, stored: u64, path: &[u8]) -> Result<(), ReadError> {
    let mut end = 0u64;
    let mut total = 0u64;
    for region in &map.regions {
        if region.offset < end {
            return Err(malformed_map(path, "has regions that overlap or are out of order"));
        }
        end = region.offset.checked_add(region.len).filter(|end| *end <= map.real_size).ok_or_else(|| {
            malformed_map(path, &format!("has data beyond the file's size of {} bytes", map.real_size))
        })?;
        total += region.len;
    }
    if total != stored {
        return Err(malformed_map(path, &format!("lists {total} bytes of data, but the entry stores {stored}")));
    }
    Ok(())
}

/// Header checksums: the unsigned sum most writers use, or the signed one some old ones did,
/// with the checksum field itself counted as spaces.
fn checksum_matches(block: &[u8; BLOCK as usize]) -> bool {
    let Ok(expected) = Header::from_byte_slice(block).cksum() else {
        return false;
    };
    let (mut unsigned, mut signed) = (8 * u32::from(b' '), 8 * i64::from(b' '));
    for (index, byte) in block.iter().enumerate() {
        if !(148..156).contains(&index) {
            unsigned += u32::from(*byte);
            signed += i64::from(*byte as i8);
        }
    }
    expected == unsigned || i64::from(expected) == signed
}

fn padding(len: u64) -> u64 {
    (BLOCK - len % BLOCK) % BLOCK
}

fn trim_nuls(mut bytes: Vec<u8>) -> Vec<u8> {
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    bytes
}

fn ended_early(err: io::Error) -> ReadError {
    if err.kind() == io::ErrorKind::UnexpectedEof {
        return ReadError::Input(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the archive ends in the middle of an entry",
        ));
    }
    ReadError::Input(err)
}

fn malformed_at(at: u64, err: &io::Error) -> ReadError {
    ReadError::Malformed(format!("the header at byte {at} of the archive is malformed: {err}"))
}

fn malformed_entry(path: &[u8], err: &io::Error) -> ReadError {
    ReadError::Malformed(format!("archive entry {} has a malformed header: {err}", shown(path)))
}

fn malformed_map(path: &[u8], why: &str) -> ReadError {
    ReadError::Malformed(format!("archive entry {} is a sparse file whose map {why}", shown(path)))
}

fn too_many_regions(path: &[u8]) -> ReadError {
    ReadError::Malformed(format!(
        "archive entry {} is a sparse file of more than {MAX_SPARSE_REGIONS} data regions, more than berth restores in one file",
        shown(path)
    ))
}

/// An archive path for a message: quoted, and cut short when long.
pub(crate) fn shown(path: &[u8]) -> String {
    const SHOWN: usize = 64;
    let text = String::from_utf8_lossy(path);
    if text.chars().count() <= SHOWN {
        return format!("{text:?}");
    }
    let prefix: String = text.chars().take(SHOWN).collect();
    format!("{:?}", format!("{prefix}…"))
}
