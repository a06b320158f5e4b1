//! Keeps a file's cached pages mapped into this process, so that a host's proactive reclaim
//! does not drop them while they are still being rewritten.
//!
//! Why: SQLite writes each WAL frame as a 24-byte header and a page, so no write covers a
//! whole 4 KiB block of the file. Rewriting a block the kernel no longer has cached
//! therefore reads it back from the disk first — synchronously, inside the commit, while
//! every other commit waits for the write lock. The WAL is rewritten from its start every
//! couple of seconds (see `sqlite::spawn_checkpointer`), so normally its blocks are all
//! cached. But hosts that reclaim "cold" page cache proactively (DAMON's `pageout` scheme
//! on unmapped file pages, as on the 2-core VMs the benchmarks run on) take the WAL's pages
//! too: the monitor samples memory by region, a region of mostly free memory looks cold,
//! and the pages it holds are dropped however recently they were written. Measured there
//! at 1,000 req/s: ~1,200 disk reads in 9 s, 0.67 ms each on average and up to 10 ms, on
//! the commit path (`perf sched timehist`: the request threads in D state in
//! `ext4_block_write_begin`).
//!
//! Pages mapped into a process are left alone by such a scheme (it is limited to unmapped
//! pages) and are only reclaimed under real memory pressure, like any other mapped file.
//! The mapping is read-only and never read through: it costs page-table entries, not
//! memory — the pages are the page cache's own. The file's pages then count in this
//! process's RSS (as shared file pages).
//!
//! Only Linux maps anything; elsewhere [`Resident::refresh`] does nothing.

use std::path::{Path, PathBuf};

/// A file whose pages are kept mapped; see the module documentation.
pub struct Resident {
    path: PathBuf,
    #[cfg(target_os = "linux")]
    map: Option<linux::Mapping>,
}

impl Resident {
    /// Nothing is mapped until the first [`Resident::refresh`].
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            #[cfg(target_os = "linux")]
            map: None,
        }
    }

    /// The bytes currently mapped (0 when nothing is).
    #[cfg(test)]
    pub fn mapped_len(&self) -> usize {
        #[cfg(target_os = "linux")]
        {
            self.map.as_ref().map_or(0, |m| m.len)
        }
        #[cfg(not(target_os = "linux"))]
        {
            0
        }
    }

    /// Maps the file as it is now, with all its pages (pages that were not cached are read
    /// in: this runs off the hot path), when it grew, shrank or was replaced since the last
    /// call; a file that does not exist (yet) is not an error: nothing is mapped. With
    /// `repopulate`, also maps in again the pages of an unchanged mapping that memory
    /// pressure has reclaimed since — a walk over the whole mapping (~2 ms per 100 MB),
    /// so not on every call.
    pub fn refresh(&mut self, repopulate: bool) -> std::io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            linux::refresh(&self.path, &mut self.map, repopulate)
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (&self.path, repopulate);
            Ok(())
        }
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::io::AsRawFd;
    use std::path::Path;

    /// One read-only shared mapping of a whole file, as it was when mapped.
    pub(super) struct Mapping {
        pub(super) addr: *mut libc::c_void,
        pub(super) len: usize,
        dev: u64,
        ino: u64,
    }

    // SAFETY: the mapping is never read or written through `addr`; the pointer is only
    // handed back to the kernel (madvise, munmap) by the one owner of the `Mapping`.
    unsafe impl Send for Mapping {}

    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: `addr`/`len` are exactly what mmap (or mremap) returned, unmapped
            // only here.
            unsafe {
                libc::munmap(self.addr, self.len);
            }
        }
    }

    /// Extends `m` to the file's new length `len` and maps in only the new pages: a WAL
    /// grows in steps while it finds its size, and mapping all of it again each time (a
    /// few ms per 100 MB) was most of the checkpointer's longest stretches on a CPU.
    /// False when the kernel cannot do it (no `mremap`, no `MADV_POPULATE_READ` before
    /// Linux 5.14, or the file shrank meanwhile); the caller then maps the file afresh.
    fn grow(m: &mut Mapping, len: usize) -> bool {
        // SAFETY: `m.addr`/`m.len` are a mapping of ours; MREMAP_MAYMOVE lets the kernel
        // move it, and on success the old address is no longer ours (replaced below).
        let addr = unsafe { libc::mremap(m.addr, m.len, len, libc::MREMAP_MAYMOVE) };
        if addr == libc::MAP_FAILED {
            return false;
        }
        // SAFETY: sysconf only reads its argument.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .unwrap_or(4096)
            .max(1);
        let from = m.len / page * page;
        m.addr = addr;
        m.len = len;
        // SAFETY: the range lies inside the mapping just made and starts on a page.
        // MADV_POPULATE_READ only faults pages in; pages the file no longer has make it
        // fail with EFAULT, not SIGBUS.
        unsafe {
            libc::madvise(
                addr.cast::<u8>().add(from).cast(),
                len - from,
                libc::MADV_POPULATE_READ,
            ) == 0
        }
    }

    pub(super) fn refresh(
        path: &Path,
        map: &mut Option<Mapping>,
        repopulate: bool,
    ) -> std::io::Result<()> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                *map = None;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let len = usize::try_from(meta.len()).unwrap_or(usize::MAX);
        if let Some(m) = map.as_mut()
            && m.dev == meta.dev()
            && m.ino == meta.ino()
        {
            if m.len == len {
                if !repopulate {
                    return Ok(());
                }
                // SAFETY: the range is the mapping's own. MADV_POPULATE_READ only faults
                // pages in; where the file has shrunk meanwhile it fails with EFAULT
                // instead of raising SIGBUS.
                if unsafe { libc::madvise(m.addr, m.len, libc::MADV_POPULATE_READ) } == 0 {
                    return Ok(());
                }
                // EINVAL: a kernel older than 5.14; EFAULT: the file shrank. Either way,
                // map it afresh (MAP_POPULATE works on every kernel).
            } else if len > m.len && grow(m, len) {
                return Ok(());
            }
        }
        *map = None;
        if len == 0 {
            return Ok(());
        }
        let file = std::fs::File::open(path)?;
        // SAFETY: a new read-only shared mapping of an open file, placed by the kernel;
        // nothing reads through it (a read past a later truncation would be SIGBUS).
        // MAP_POPULATE ignores pages it cannot fault in.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                file.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        // The mapping keeps its own reference to the file; `file` can close.
        *map = Some(Mapping {
            addr,
            len,
            dev: meta.dev(),
            ino: meta.ino(),
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Resident;
    use std::io::Write;

    /// Pages of `path` that are in this process's memory map, from /proc/self/smaps.
    #[cfg(target_os = "linux")]
    fn mapped_rss_kib(path: &std::path::Path) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let name = path.to_str().unwrap();
        let mut in_file = false;
        let mut kib = 0;
        for line in smaps.lines() {
            // A mapping's header: "start-end perms offset dev inode [path]".
            let first = line.split_whitespace().next().unwrap_or("");
            if first.contains('-') && first.chars().all(|c| c == '-' || c.is_ascii_hexdigit()) {
                in_file = line.ends_with(name);
            } else if in_file && let Some(rest) = line.strip_prefix("Rss:") {
                kib += rest
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap();
            }
        }
        kib
    }

    #[test]
    fn a_missing_file_maps_nothing_and_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Resident::new(&dir.path().join("agv.db-wal"));
        r.refresh(false).unwrap();
        assert_eq!(r.mapped_len(), 0);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_files_pages_are_mapped_and_follow_it_as_it_grows_shrinks_and_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agv.db-wal");
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&vec![7u8; 64 * 1024]).unwrap();
        let mut r = Resident::new(&path);
        r.refresh(false).unwrap();
        assert_eq!(r.mapped_len(), 64 * 1024);
        assert_eq!(mapped_rss_kib(&path), 64, "every cached page is mapped in");

        // Grows: the new extent is mapped too.
        f.write_all(&vec![8u8; 64 * 1024]).unwrap();
        r.refresh(false).unwrap();
        assert_eq!(r.mapped_len(), 128 * 1024);
        assert_eq!(mapped_rss_kib(&path), 128);

        // The same size again: nothing to remap, still all mapped.
        r.refresh(false).unwrap();
        assert_eq!(mapped_rss_kib(&path), 128);

        // Pages taken out of the mapping (as reclaim does) come back on a repopulate.
        // SAFETY: a range inside the test's own mapping; MADV_DONTNEED on a shared file
        // mapping only drops this process's page-table entries.
        let m = r.map.as_ref().unwrap();
        assert_eq!(
            unsafe { libc::madvise(m.addr, m.len, libc::MADV_DONTNEED) },
            0
        );
        assert_eq!(mapped_rss_kib(&path), 0);
        r.refresh(false).unwrap();
        assert_eq!(mapped_rss_kib(&path), 0, "not without repopulate");
        r.refresh(true).unwrap();
        assert_eq!(mapped_rss_kib(&path), 128);

        // Shrinks (SQLite truncating its WAL): remapped to the new size, no SIGBUS.
        f.set_len(16 * 1024).unwrap();
        r.refresh(false).unwrap();
        assert_eq!(r.mapped_len(), 16 * 1024);
        assert_eq!(mapped_rss_kib(&path), 16);

        // Replaced by a new file under the same name: the old one is let go.
        drop(f);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, vec![9u8; 32 * 1024]).unwrap();
        r.refresh(false).unwrap();
        assert_eq!(r.mapped_len(), 32 * 1024);
        assert_eq!(mapped_rss_kib(&path), 32);

        // Removed: nothing stays mapped.
        std::fs::remove_file(&path).unwrap();
        r.refresh(false).unwrap();
        assert_eq!(r.mapped_len(), 0);
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        assert!(!maps.contains(path.to_str().unwrap()), "{maps}");
    }
}
