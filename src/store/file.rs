//! `FileStore`: one JSON file per session under a directory.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{Changes, Record, SessionId, SessionStore, owner_digest};
use crate::error::Error;

/// Sessions as files: `ROOT/ab/ab12…ef.json`, named by the id's 64 hex
/// digits and spread over 256 sub-directories by their first two, so a
/// million sessions put about 4,000 files in each directory.
///
/// - Writes are atomic: a temporary file in the same directory, `fsync`,
///   `rename` over the old file, `fsync` of the directory. A crash or a
///   full disk leaves the previous record intact, never a torn one.
/// - `create`, `apply` and `delete` hold an exclusive `flock` on the
///   sub-directory's `.lock` file for their read-modify-write, so `apply`
///   is atomic per key across threads and processes sharing the directory
///   (on one machine; not over NFS).
/// - File names come only from validated ids (hex of 32 bytes): a hostile
///   cookie can never name a path.
/// - On Unix, only the owner can read anything: directories are created
///   0700 and records 0600 whatever the umask, and a root that another
///   user owns or that its group or everyone may write to is refused at
///   construction. Processes sharing the store must run as one user.
/// - Expired files are ignored when read and removed by
///   [`delete_expired`](SessionStore::delete_expired); run it with
///   [`spawn_cleanup`](super::spawn_cleanup).
/// - Sessions are indexed by owner ([`SessionStore::owned`]):
///   `ROOT/owners/{digest}/` per owner (the SHA-256 of the owner in hex, so
///   an owner never names a path) holds an empty marker file per session,
///   named by the id's hex. The marker is made, durably, under the
///   record's lock before the record that names the owner is written, and
///   removed when the owner changes and on take, delete and expiry; a
///   listing checks each marker against its record under the record's
///   lock, and drops those a crash left behind, as the sweep does. An
///   owner's directory goes with its last marker.
///
/// Every call runs on Tokio's blocking thread pool.
#[derive(Debug, Clone)]
pub struct FileStore {
    root: Arc<Path>,
}

impl FileStore {
    /// A store under `root`, created if missing (mode 0700 on Unix, as
    /// are the sub-directories; records are 0600).
    ///
    /// # Errors
    /// [`ErrorKind::Store`](crate::ErrorKind::Store) when the directory
    /// cannot be created or written to, and on Unix when another user owns
    /// it or its group or everyone may write to it: another user could
    /// then read, plant or replace sessions.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self, Error> {
        let root: PathBuf = root.into();
        private_dir().create(&root).map_err(Error::store)?;
        #[cfg(unix)]
        secure_root(&root).map_err(Error::store)?;
        owners_dir(&root).map_err(Error::store)?;
        Ok(Self { root: root.into() })
    }

    /// The directory the store writes under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    async fn blocking<R: Send + 'static>(
        &self,
        work: impl FnOnce(&Path) -> io::Result<R> + Send + 'static,
    ) -> Result<R, Error> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || work(&root))
            .await
            .map_err(Error::store)?
            .map_err(Error::store)
    }
}

/// Creates directories, parents included, that only their owner can
/// list or enter: a record's file name is its session id.
fn private_dir() -> fs::DirBuilder {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
}

/// Opens files that only their owner can read or write.
fn private_file() -> fs::OpenOptions {
    let mut options = File::options();
    options.write(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

/// Refuses a root that other users could tamper with, and closes the
/// sub-directories that earlier versions left readable by everyone.
#[cfg(unix)]
fn secure_root(root: &Path) -> io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let refuse = |why: String| {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("refusing {} as a session directory: {why}", root.display()),
        ))
    };
    let meta = fs::metadata(root)?;
    if meta.mode() & 0o022 != 0 {
        return refuse(format!(
            "it is writable by its group or by everyone (mode {:o})",
            meta.mode() & 0o7777
        ));
    }
    // std cannot tell this process's user id and the crate has no unsafe
    // code to ask libc; but what must own the root is the user our records
    // are written as, and a file created in it says exactly that. The
    // probe also shows that the root is writable, before the first save.
    let probe = root.join(format!(".tmp-owner-{}", random_suffix()?));
    let writer = private_file()
        .create_new(true)
        .open(&probe)?
        .metadata()?
        .uid();
    fs::remove_file(&probe)?;
    if meta.uid() != writer {
        return refuse(format!(
            "it is owned by uid {}, and this process writes as uid {writer}",
            meta.uid()
        ));
    }
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        let is_shard = entry.file_name().len() == 2 && entry.file_type()?.is_dir();
        if is_shard && entry.metadata()?.mode() & 0o077 != 0 {
            fs::set_permissions(entry.path(), fs::Permissions::from_mode(0o700))?;
        }
    }
    Ok(())
}

/// 16 random hex digits, for names no other writer picks.
fn random_suffix() -> io::Result<String> {
    let mut suffix = [0u8; 8];
    getrandom::fill(&mut suffix).map_err(io::Error::other)?;
    Ok(suffix.iter().map(|b| format!("{b:02x}")).collect())
}

/// Where the record of `id` lives: (sub-directory, file).
fn paths(root: &Path, id: &SessionId) -> (PathBuf, PathBuf) {
    let hex = id.to_hex();
    let dir = root.join(&hex[..2]);
    let file = dir.join(format!("{hex}.json"));
    (dir, file)
}

/// Milliseconds since the Unix epoch by the system clock: leases are the
/// store's, as native TTLs are.
fn lease_clock() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A lease file's holder and until when; `None` when there is none or it
/// does not parse.
fn read_lease(path: &Path) -> io::Result<Option<(String, u64)>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(text
        .split_once(' ')
        .and_then(|(holder, until)| Some((holder.to_owned(), until.parse().ok()?))))
}

/// Runs `work` holding the exclusive lock of the sub-directory `dir`.
fn locked<R>(dir: &Path, work: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
    private_dir().create(dir)?;
    let lock = private_file()
        .create(true)
        .truncate(false)
        .open(dir.join(".lock"))?;
    lock.lock()?;
    // The lock is released when `lock` is closed, on every path out.
    work()
}

/// The directory of the owner indexes, beside the shards.
const OWNERS: &str = "owners";

/// Whether the entry `name` of the root is a shard of records.
fn is_shard(name: &std::ffi::OsStr) -> bool {
    name.len() == 2
        && name
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Makes the directory of the owner indexes, durably: a marker's `mark`
/// syncs the owner's directory and this one, not the root, so a crash
/// after the very first marker could otherwise lose the whole index while
/// the record it stood for (in a shard made long before) survives.
fn owners_dir(root: &Path) -> io::Result<()> {
    let owners = root.join(OWNERS);
    if owners.is_dir() {
        return Ok(());
    }
    private_dir().create(&owners)?;
    File::open(root)?.sync_all()
}

/// Where the marker of `id` in the index of the owner `digest` lives:
/// (owner's directory, marker).
fn marker(root: &Path, digest: &str, id: &SessionId) -> (PathBuf, PathBuf) {
    let dir = root.join(OWNERS).join(digest);
    let marker = dir.join(id.to_hex());
    (dir, marker)
}

/// Puts the marker of `id` in the index of `owner`, durably: call it under
/// the record's lock, before writing the record that names the owner, so
/// that a listing never misses a session that was acknowledged.
fn mark(root: &Path, owner: &str, id: &SessionId) -> io::Result<()> {
    let (dir, marker) = marker(root, &owner_digest(owner), id);
    // Another shard's unmark removes the directory with its last marker;
    // it may do so between our mkdir and our create.
    for _ in 0..8 {
        private_dir().create(&dir)?;
        match private_file().create(true).truncate(false).open(&marker) {
            Ok(_) => {
                File::open(&dir)?.sync_all()?;
                return File::open(root.join(OWNERS))?.sync_all();
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(
        "an owner's index directory kept being removed while a session was added to it",
    ))
}

/// Removes the marker of `id` from the index of the owner `digest`, and
/// the owner's directory if that was its last marker. Best effort: the
/// record is gone or moved already, and a marker left behind is dropped by
/// the next listing or sweep.
fn unmark(root: &Path, digest: &str, id: &SessionId) {
    let (dir, marker) = marker(root, digest, id);
    if let Err(e) = fs::remove_file(&marker)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::debug!(error = %e, "a session's owner marker could not be removed");
    }
    // Fails, as it should, while other markers are left.
    let _ = fs::remove_dir(&dir);
}

/// The record the marker of `id` in the index `digest` stands for, if it
/// names an owner of that digest (expired or not); otherwise the marker
/// goes. Under the record's lock, so that no write adding the marker anew
/// slips between the check and the removal.
fn check_marker(root: &Path, digest: &str, id: &SessionId) -> io::Result<Option<Record>> {
    let (shard, file) = paths(root, id);
    locked(&shard, || {
        let record = read(&file)?;
        let named =
            (record.as_ref().and_then(Record::owner)).is_some_and(|o| owner_digest(o) == digest);
        if named {
            return Ok(record);
        }
        unmark(root, digest, id);
        Ok(None)
    })
}

/// The ids of the markers in the owner's directory `dir` (none when it is
/// missing); names that are not an id's hex are not ours and are skipped.
fn marked(dir: &Path) -> io::Result<Vec<SessionId>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut ids = Vec::new();
    for entry in entries {
        if let Some(id) = entry?.file_name().to_str().and_then(SessionId::from_hex) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// Moves the record of `id` from the index of `old` to that of `new` (each
/// `None` for no owner): the new marker before the record is written
/// (`write`), the old one after.
fn reowned(
    root: &Path,
    id: &SessionId,
    old: Option<&str>,
    new: Option<&str>,
    write: impl FnOnce() -> io::Result<()>,
) -> io::Result<()> {
    if let Some(new) = new {
        mark(root, new, id)?;
    }
    write()?;
    if let Some(old) = old
        && Some(old) != new
    {
        unmark(root, &owner_digest(old), id);
    }
    Ok(())
}

fn read(file: &Path) -> io::Result<Option<Record>> {
    match fs::read(file) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn read_live(file: &Path, now: u64) -> io::Result<Option<Record>> {
    Ok(read(file)?.filter(|record| !record.is_expired(now)))
}

/// Replaces `file` with `record` atomically.
fn write(dir: &Path, file: &Path, record: &Record) -> io::Result<()> {
    let temp = dir.join(format!(".tmp-{}", random_suffix()?));
    let result = (|| {
        let mut out = private_file().create_new(true).open(&temp)?;
        serde_json::to_writer(&mut out, record).map_err(io::Error::other)?;
        out.flush()?;
        out.sync_all()?;
        fs::rename(&temp, file)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

#[async_trait]
impl SessionStore for FileStore {
    async fn load(&self, id: &SessionId, now: u64) -> Result<Option<Record>, Error> {
        let id = id.clone();
        // No lock: rename makes every read see a whole record.
        self.blocking(move |root| read_live(&paths(root, &id).1, now))
            .await
    }

    async fn create(&self, id: &SessionId, record: &Record) -> Result<bool, Error> {
        let (id, record) = (id.clone(), record.clone());
        self.blocking(move |root| {
            let (dir, file) = paths(root, &id);
            locked(&dir, || {
                let old = read(&file)?;
                if old
                    .as_ref()
                    .is_some_and(|o| !o.is_expired(record.created_at))
                {
                    return Ok(false);
                }
                let old_owner = old.as_ref().and_then(Record::owner);
                reowned(root, &id, old_owner, record.owner(), || {
                    write(&dir, &file, &record)
                })?;
                Ok(true)
            })
        })
        .await
    }

    async fn apply(&self, id: &SessionId, changes: &Changes) -> Result<bool, Error> {
        let (id, changes) = (id.clone(), changes.clone());
        // Expectations and merges are judged under the lock, against the
        // record read under it; a conflict writes nothing.
        self.blocking(move |root| {
            let (dir, file) = paths(root, &id);
            locked(&dir, || {
                let Some(mut record) = read_live(&file, changes.now)? else {
                    return Ok(Ok(false));
                };
                let change = changes.owner_change();
                let old_owner = change.and_then(|_| record.owner().map(str::to_owned));
                if let Err(conflict) = changes.apply_to(&mut record) {
                    return Ok(Err(conflict));
                }
                let save = || write(&dir, &file, &record);
                match change {
                    None => save()?,
                    Some(new_owner) => reowned(root, &id, old_owner.as_deref(), new_owner, save)?,
                }
                Ok(Ok(true))
            })
        })
        .await?
    }

    /// A file `{hex}.lease` beside the record, holding the holder and
    /// until when (milliseconds of the system clock), read and written
    /// under the directory's lock; one that does not parse (a crash) is a
    /// free lease.
    async fn lease(&self, id: &SessionId, holder: &str, hold: Duration) -> Result<bool, Error> {
        let (id, holder) = (id.clone(), holder.to_owned());
        self.blocking(move |root| {
            let (dir, file) = paths(root, &id);
            let path = file.with_extension("lease");
            locked(&dir, || {
                let now = lease_clock();
                if let Some((held, until)) = read_lease(&path)?
                    && until > now
                    && held != holder
                {
                    return Ok(false);
                }
                let until = now.saturating_add(u64::try_from(hold.as_millis()).unwrap_or(u64::MAX));
                private_file()
                    .create(true)
                    .write(true)
                    .truncate(true)
                    .open(&path)?
                    .write_all(format!("{holder} {until}").as_bytes())?;
                Ok(true)
            })
        })
        .await
    }

    async fn release(&self, id: &SessionId, holder: &str) -> Result<(), Error> {
        let (id, holder) = (id.clone(), holder.to_owned());
        self.blocking(move |root| {
            let (dir, file) = paths(root, &id);
            let path = file.with_extension("lease");
            locked(&dir, || {
                if read_lease(&path)?.is_some_and(|(held, _)| held == holder) {
                    fs::remove_file(&path)?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn delete(&self, id: &SessionId) -> Result<(), Error> {
        let id = id.clone();
        self.blocking(move |root| {
            let (dir, file) = paths(root, &id);
            locked(&dir, || {
                // A record that does not parse is removed all the same.
                let record = read(&file).ok().flatten();
                let owner = record.as_ref().and_then(Record::owner);
                match fs::remove_file(&file) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
                if let Some(owner) = owner {
                    unmark(root, &owner_digest(owner), &id);
                }
                Ok(())
            })
        })
        .await
    }

    /// Read and removed under the shard's lock, as `apply` runs: atomic
    /// with it.
    async fn take(&self, id: &SessionId, now: u64) -> Result<Option<Record>, Error> {
        let id = id.clone();
        self.blocking(move |root| {
            let (dir, file) = paths(root, &id);
            locked(&dir, || {
                let record = read(&file)?;
                match fs::remove_file(&file) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
                if let Some(owner) = record.as_ref().and_then(Record::owner) {
                    unmark(root, &owner_digest(owner), &id);
                }
                Ok(record.filter(|record| !record.is_expired(now)))
            })
        })
        .await
    }

    /// Removes expired records with their owner markers, then the markers
    /// a crash left without their record.
    async fn delete_expired(&self, now: u64) -> Result<u64, Error> {
        self.blocking(move |root| {
            let mut removed = 0;
            for shard in fs::read_dir(root)? {
                let shard = shard?;
                let dir = shard.path();
                if !is_shard(&shard.file_name()) || !dir.is_dir() {
                    continue;
                }
                removed += locked(&dir, || {
                    let mut removed = 0;
                    for entry in fs::read_dir(&dir)? {
                        let path = entry?.path();
                        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                        // Under the lock no write is under way: a temporary
                        // file is what a crash left behind.
                        if name.starts_with(".tmp-") {
                            let _ = fs::remove_file(&path);
                            continue;
                        }
                        // A lease its request never gave back, past its time.
                        if name.ends_with(".lease") {
                            let over = read_lease(&path).ok().flatten();
                            if over.is_none_or(|(_, until)| until <= lease_clock()) {
                                let _ = fs::remove_file(&path);
                            }
                            continue;
                        }
                        let Some(hex) = name.strip_suffix(".json") else {
                            continue;
                        };
                        let expired = read(&path).ok().flatten().filter(|r| r.is_expired(now));
                        let Some(expired) = expired else {
                            continue;
                        };
                        if fs::remove_file(&path).is_ok() {
                            removed += 1;
                            if let (Some(owner), Some(id)) =
                                (expired.owner(), SessionId::from_hex(hex))
                            {
                                unmark(root, &owner_digest(owner), &id);
                            }
                        }
                    }
                    Ok(removed)
                })?;
            }
            let owners = match fs::read_dir(root.join(OWNERS)) {
                Ok(owners) => owners,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
                Err(e) => return Err(e),
            };
            for owner in owners {
                let owner = owner?;
                let Some(digest) = owner.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                for id in marked(&owner.path())? {
                    match check_marker(root, &digest, &id) {
                        // A record that does not parse keeps its marker;
                        // load reports it.
                        Err(e) if e.kind() == io::ErrorKind::InvalidData => {}
                        checked => drop(checked?),
                    }
                }
            }
            Ok(removed)
        })
        .await
    }

    /// Each marker checked against its record under the record's lock;
    /// markers of records gone or owned by another go.
    async fn owned(&self, owner: &str, now: u64) -> Result<Vec<(SessionId, Record)>, Error> {
        let owner = owner.to_owned();
        self.blocking(move |root| {
            let digest = owner_digest(&owner);
            let mut owned = Vec::new();
            for id in marked(&root.join(OWNERS).join(&digest))? {
                let record = check_marker(root, &digest, &id)?;
                let held = |r: &Record| r.owner() == Some(owner.as_str()) && !r.is_expired(now);
                if let Some(record) = record.filter(held) {
                    owned.push((id, record));
                }
            }
            Ok(owned)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{OWNER_KEY, now};
    use serde_json::json;

    fn record(expires_at: u64) -> Record {
        Record::new(
            json!({"a": 1}).as_object().unwrap().clone(),
            false,
            now(),
            expires_at,
        )
    }

    /// The owner indexes' directory is made (and the root synced) with
    /// the store, not by the first login, whose marker's syncs do not
    /// reach the root.
    #[tokio::test]
    async fn the_owner_index_directory_comes_with_the_store() {
        let dir = tempfile::tempdir().unwrap();
        FileStore::new(dir.path()).unwrap();
        assert!(dir.path().join(OWNERS).is_dir());
    }

    #[tokio::test]
    async fn files_are_named_by_hex_and_sharded() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path()).unwrap();
        let id = SessionId::parse(&format!("{}A", "_".repeat(42))).unwrap();
        assert!(store.create(&id, &record(now() + 60)).await.unwrap());
        let hex = id.to_hex();
        assert!(
            hex.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        let file = dir.path().join(&hex[..2]).join(format!("{hex}.json"));
        assert!(file.is_file(), "{}", file.display());
        // Nothing but the shard directory (and its lock) was created,
        // beside the owner indexes' directory the store starts with.
        assert_eq!(names(dir.path()), [hex[..2].to_owned(), OWNERS.to_owned()]);
    }

    fn owned(owner: &str, expires_at: u64) -> Record {
        let mut record = record(expires_at);
        record.data.insert(OWNER_KEY.into(), json!(owner));
        record
    }

    /// The names in `dir`, sorted (none when it is missing).
    fn names(dir: &Path) -> Vec<String> {
        let Ok(entries) = fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn owners_name_no_path_and_markers_follow_their_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path()).unwrap();
        let owners = dir.path().join(OWNERS);
        let (ann, bob) = ("../../ann/{x}", "bob");
        let id = SessionId::generate();
        assert!(store.create(&id, &owned(ann, now() + 60)).await.unwrap());
        assert_eq!(
            names(&owners),
            [owner_digest(ann)],
            "only the digest names a path"
        );
        assert_eq!(names(&owners.join(owner_digest(ann))), [id.to_hex()]);

        let mut moved = Changes::expiry(now(), now() + 60);
        moved.set.push((OWNER_KEY.into(), json!(bob)));
        assert!(store.apply(&id, &moved).await.unwrap());
        assert_eq!(names(&owners), [owner_digest(bob)], "ann's directory went");
        assert_eq!(names(&owners.join(owner_digest(bob))), [id.to_hex()]);

        let mut refreshed = Changes::expiry(now(), now() + 120);
        refreshed.set.push(("a".into(), json!(2)));
        assert!(store.apply(&id, &refreshed).await.unwrap());
        assert_eq!(names(&owners.join(owner_digest(bob))), [id.to_hex()]);

        let taken = store.take(&id, now()).await.unwrap().unwrap();
        assert!(names(&owners).is_empty(), "taken: no marker left");
        let again = SessionId::generate();
        assert!(store.create(&again, &taken).await.unwrap());
        store.delete(&again).await.unwrap();
        assert!(names(&owners).is_empty(), "deleted: no marker left");
    }

    /// A crash between a marker and its record's write (or its removal)
    /// leaves a marker without a record: a listing drops those of its
    /// owner, the sweep those of everyone, and the sweep takes the markers
    /// of the records it expires.
    #[tokio::test]
    async fn listings_and_the_sweep_drop_markers_left_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path()).unwrap();
        let owners = dir.path().join(OWNERS);
        let (live, expiring) = (SessionId::generate(), SessionId::generate());
        assert!(
            store
                .create(&live, &owned("ann", now() + 60))
                .await
                .unwrap()
        );
        assert!(
            store
                .create(&expiring, &owned("ann", now() + 60))
                .await
                .unwrap()
        );
        let (shard, file) = paths(dir.path(), &expiring);
        write(&shard, &file, &owned("ann", now() - 1)).unwrap();
        let (ann_left, bob_left) = (SessionId::generate(), SessionId::generate());
        mark(dir.path(), "ann", &ann_left).unwrap();
        mark(dir.path(), "bob", &bob_left).unwrap();

        let listed = store.owned("ann", now()).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].0, live);
        let mut kept = vec![live.to_hex(), expiring.to_hex()];
        kept.sort();
        assert_eq!(
            names(&owners.join(owner_digest("ann"))),
            kept,
            "the listing dropped the marker left behind, and kept the expired record's"
        );

        assert_eq!(store.delete_expired(now()).await.unwrap(), 1);
        assert_eq!(names(&owners.join(owner_digest("ann"))), [live.to_hex()]);
        assert_eq!(
            names(&owners),
            [owner_digest("ann")],
            "bob's went, unlisted"
        );
    }

    #[tokio::test]
    async fn delete_expired_removes_dead_files_and_crash_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path()).unwrap();
        let live = SessionId::generate();
        let dead = SessionId::generate();
        store.create(&live, &record(now() + 60)).await.unwrap();
        store.create(&dead, &record(now() + 60)).await.unwrap();
        // Age the second one on disk, as time would.
        let (shard, file) = paths(dir.path(), &dead);
        write(&shard, &file, &record(now() - 1)).unwrap();
        fs::write(shard.join(".tmp-deadbeef"), b"{half a rec").unwrap();
        assert_eq!(store.delete_expired(now()).await.unwrap(), 1);
        assert!(!file.exists());
        assert!(!shard.join(".tmp-deadbeef").exists());
        assert!(store.load(&live, now()).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn io_failures_are_errors_and_leave_the_record_intact() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path()).unwrap();
        let id = SessionId::generate();
        // One reading of the clock: a busy machine may cross a second
        // between two.
        let expires = now() + 60;
        store.create(&id, &record(expires)).await.unwrap();
        let (shard, file) = paths(dir.path(), &id);
        // Make the lock file impossible to open: a directory in its place.
        fs::create_dir(shard.join(".lock.blocked")).unwrap();
        fs::rename(shard.join(".lock"), shard.join(".lock.moved")).unwrap();
        fs::rename(shard.join(".lock.blocked"), shard.join(".lock")).unwrap();
        let error = store
            .apply(&id, &Changes::expiry(now(), now() + 120))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), crate::ErrorKind::Store);
        assert!(
            std::error::Error::source(&error).is_some(),
            "the io error is kept"
        );
        assert_eq!(
            store.load(&id, now()).await.unwrap().unwrap().expires_at,
            expires
        );
        assert!(file.exists());
        // A root that is a file is refused at construction.
        let not_a_dir = dir.path().join("file");
        fs::write(&not_a_dir, b"x").unwrap();
        assert!(FileStore::new(not_a_dir.join("sub")).is_err());
    }

    /// Runs the test named `test` again in a child process under `umask
    /// 022`, the usual default, which leaves plainly created files readable
    /// by every user; true in the child, where the test's body runs.
    #[cfg(unix)]
    fn in_child_under_umask_022(test: &str) -> bool {
        const CHILD: &str = "SESSION_LAYER_UMASK_022";
        if std::env::var_os(CHILD).is_some() {
            return true;
        }
        let status = std::process::Command::new("sh")
            .args(["-c", "umask 022 && exec \"$0\" \"$@\""])
            .arg(std::env::current_exe().unwrap())
            .args([test, "--exact", "--nocapture"])
            .env(CHILD, "1")
            .status()
            .unwrap();
        assert!(status.success(), "{test} failed under umask 022");
        false
    }

    /// The permission bits of `path`, in octal.
    #[cfg(unix)]
    fn mode(path: &Path) -> String {
        use std::os::unix::fs::PermissionsExt;
        format!(
            "{:o}",
            fs::metadata(path).unwrap().permissions().mode() & 0o7777
        )
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn records_and_directories_are_private_to_the_owner() {
        if !in_child_under_umask_022(
            "store::file::tests::records_and_directories_are_private_to_the_owner",
        ) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("sessions");
        let store = FileStore::new(&root).unwrap();
        let id = SessionId::generate();
        store.create(&id, &record(now() + 60)).await.unwrap();
        let (shard, file) = paths(&root, &id);
        assert_eq!(mode(&root), "700", "the root");
        assert_eq!(mode(&shard), "700", "a sub-directory");
        assert_eq!(mode(&file), "600", "a record");
        assert_eq!(mode(&shard.join(".lock")), "600", "a lock file");
        store
            .apply(&id, &Changes::expiry(now(), now() + 120))
            .await
            .unwrap();
        assert_eq!(mode(&file), "600", "a rewritten record");
        let mut login = Changes::expiry(now(), now() + 120);
        login.set.push((OWNER_KEY.into(), json!("ann")));
        store.apply(&id, &login).await.unwrap();
        let (owner_dir, marker) = marker(&root, &owner_digest("ann"), &id);
        assert_eq!(mode(&root.join(OWNERS)), "700", "the owner indexes");
        assert_eq!(mode(&owner_dir), "700", "an owner's index");
        assert_eq!(mode(&marker), "600", "a marker");

        // A sub-directory an earlier version left open to everyone is
        // closed when the store opens: the file names in it are session ids.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&shard, fs::Permissions::from_mode(0o755)).unwrap();
        FileStore::new(&root).unwrap();
        assert_eq!(mode(&shard), "700", "a sub-directory left open");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_root_other_users_could_tamper_with_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        for open in [0o777, 0o770, 0o1777, 0o702] {
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(open)).unwrap();
            let error = FileStore::new(dir.path()).unwrap_err();
            assert_eq!(error.kind(), crate::ErrorKind::Store);
            let why = std::error::Error::source(&error).unwrap().to_string();
            assert!(
                why.contains("writable by its group or by everyone"),
                "{open:o}: {why}"
            );
        }
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        FileStore::new(dir.path()).expect("a root only its owner writes to");

        // Owned by another user (`nobody`): needs root to arrange.
        if std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).is_err() {
            eprintln!("NOT RUN: the other-owner case needs root to chown the directory");
            return;
        }
        let error = FileStore::new(dir.path()).unwrap_err();
        let why = std::error::Error::source(&error).unwrap().to_string();
        assert!(why.contains("owned by uid 65534"), "{why}");
    }

    #[tokio::test]
    async fn a_corrupt_file_is_an_error_not_an_empty_session() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path()).unwrap();
        let id = SessionId::generate();
        let (shard, file) = paths(dir.path(), &id);
        fs::create_dir_all(&shard).unwrap();
        fs::write(&file, b"not json").unwrap();
        assert!(store.load(&id, now()).await.is_err());
    }
}
