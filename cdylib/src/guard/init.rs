//! `C_Initialize`'s arguments: the mutex and flag rules, and `pReserved` as our configuration
//! string, copied by the kernel (`copy_caller_cstr`) because it is the one caller pointer the spec
//! does not promise readable.

use cryptoki_sys::*;
use hsmpool_engine::{Error, InitArgs, Result};

use super::pointer::in_opt;

/// The prefix that marks `CK_C_INITIALIZE_ARGS.pReserved` as our configuration string
/// (`HSMPOOL_CONFIG_PREFIX` in `include/hsmpool.h`).
pub const CONFIG_PREFIX: &[u8] = b"hsmpool:";

/// The longest configuration string we read, NUL included; a longer one is `CKR_ARGUMENTS_BAD`
/// rather than an unbounded walk through the caller's memory.
pub const CONFIG_MAX_LEN: usize = 4096;

/// Reads `C_Initialize`'s `pInitArgs` (§5.4.1). NULL means defaults. Mutex callbacks must be all
/// set or all NULL (`CKR_ARGUMENTS_BAD`); set without `CKF_OS_LOCKING_OK` they are
/// `CKR_CANT_LOCK` (we only ever use our own locks); `CKF_LIBRARY_CANT_CREATE_OS_THREADS` is
/// accepted (we need no threads of our own for correctness). A non-NULL `pReserved` must be our
/// configuration string, `"hsmpool:<config>"`, else `CKR_ARGUMENTS_BAD`.
///
/// # Safety
/// A non-NULL `ptr` must address an initialised `CK_C_INITIALIZE_ARGS` (§5.4.1 promises that);
/// its `pReserved` may hold any value and is never dereferenced (see [`config_string`]).
pub(crate) unsafe fn init_args(ptr: *const CK_C_INITIALIZE_ARGS) -> Result<InitArgs> {
    // SAFETY: relayed from this function's contract.
    let Some(args) = (unsafe { in_opt(ptr) })? else {
        return Ok(InitArgs::default());
    };
    let set = [
        args.CreateMutex.is_some(),
        args.DestroyMutex.is_some(),
        args.LockMutex.is_some(),
        args.UnlockMutex.is_some(),
    ];
    let n_set = set.iter().filter(|s| **s).count();
    if n_set != 0 && n_set != set.len() {
        return Err(Error::ArgumentsBad(
            "some but not all mutex callbacks are set",
        ));
    }
    if n_set == set.len() && args.flags & CKF_OS_LOCKING_OK == 0 {
        return Err(Error::CantLock);
    }
    let config = config_string(args.pReserved.cast::<u8>().cast_const())?;
    Ok(InitArgs { config })
}

/// `pReserved` as our configuration string: NULL is `None`; anything else must be a readable,
/// NUL-terminated, UTF-8 string of at most [`CONFIG_MAX_LEN`] bytes starting with
/// [`CONFIG_PREFIX`], else `CKR_ARGUMENTS_BAD`.
///
/// PKCS #11 3.0 §5.4.1 says `pReserved` is reserved and must be NULL, so a non-NULL value is the
/// one caller pointer the spec does not promise readable: conformance suites pass `(void*)1`.
/// It is therefore never dereferenced here: [`copy_caller_cstr`] has the kernel copy it, which
/// reports an unreadable byte as an error instead of faulting in the caller's process.
fn config_string(ptr: *const u8) -> Result<Option<String>> {
    if ptr.is_null() {
        return Ok(None);
    }
    let whole = copy_caller_cstr(ptr, CONFIG_MAX_LEN)?;
    let rest = whole
        .strip_prefix(CONFIG_PREFIX)
        .ok_or(Error::ArgumentsBad(
            "pReserved is not an hsmpool configuration string",
        ))?;
    let rest = std::str::from_utf8(rest)
        .map_err(|_| Error::ArgumentsBad("configuration string is not UTF-8"))?;
    Ok(Some(rest.to_owned()))
}

/// The most bytes one kernel copy reads: a chunk never crosses a 4 KiB boundary, so it lies in
/// one page (pages are 4 KiB or larger) and is readable whole or not at all.
const PROBE_CHUNK: usize = 4096;

/// Copies the NUL-terminated string at `ptr` (without its NUL) from memory that may be unmapped,
/// unreadable or unterminated, without dereferencing `ptr`: each chunk, up to the next 4 KiB
/// boundary, is read by the kernel (`process_vm_readv(2)` on our own process; where a seccomp
/// policy forbids that, `write(2)` into a pipe and read back), which answers `EFAULT` for memory
/// we may not read. An unreadable byte before the NUL, or no NUL within `max` bytes, is
/// `CKR_ARGUMENTS_BAD`; the copy stops at the first NUL, so nothing past the string is read.
/// Nothing here needs a `# Safety` contract: any address value is acceptable.
pub(crate) fn copy_caller_cstr(ptr: *const u8, max: usize) -> Result<Vec<u8>> {
    let unreadable = || Error::ArgumentsBad("pReserved is not a readable NUL-terminated string");
    let mut reader = KernelReader::new();
    let mut out = Vec::new();
    let mut addr = ptr as usize;
    let mut chunk = [0u8; PROBE_CHUNK];
    while out.len() < max {
        let want = (PROBE_CHUNK - addr % PROBE_CHUNK).min(max - out.len());
        let got = reader
            .read(addr, &mut chunk[..want])
            .ok_or_else(unreadable)?;
        let bytes = chunk.get(..got).ok_or_else(unreadable)?;
        if let Some(nul) = bytes.iter().position(|b| *b == 0) {
            out.extend_from_slice(&bytes[..nul]);
            return Ok(out);
        }
        out.extend_from_slice(bytes);
        addr = addr.checked_add(got).ok_or_else(unreadable)?;
    }
    Err(Error::ArgumentsBad(
        "string is not NUL-terminated within its bound",
    ))
}

/// Reads another part of our own address space through the kernel (see [`copy_caller_cstr`]).
enum KernelReader {
    /// `process_vm_readv` on our own pid (the first try).
    VmRead,
    /// A pipe (`write` in, `read` out) once `process_vm_readv` is refused, or `None` when no
    /// pipe could be made either.
    Pipe(Option<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)>),
}

impl KernelReader {
    fn new() -> KernelReader {
        KernelReader::VmRead
    }

    /// Copies `buf.len()` bytes (all within one page) from `addr` into `buf`: `Some(n)` with
    /// `n == buf.len()`, or `None` when the memory is unreadable or cannot be checked.
    fn read(&mut self, addr: usize, buf: &mut [u8]) -> Option<usize> {
        if let KernelReader::VmRead = self {
            match vm_read(addr, buf) {
                Ok(n) => return (n == buf.len()).then_some(n),
                Err(libc::EFAULT) => return None,
                // ENOSYS, EPERM (seccomp, Yama): fall back to the pipe.
                Err(_) => *self = KernelReader::Pipe(pipe()),
            }
        }
        match self {
            KernelReader::Pipe(Some((rd, wr))) => pipe_read(rd, wr, addr, buf),
            _ => None,
        }
    }
}

/// One `process_vm_readv` of `buf.len()` bytes at `addr` in this process: bytes read or errno.
fn vm_read(addr: usize, buf: &mut [u8]) -> std::result::Result<usize, i32> {
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: buf.len(),
    };
    loop {
        // SAFETY: `local` describes `buf`, which we own and may write; the kernel only reads the
        // remote range, through its own page tables, and answers EFAULT where it is not mapped
        // readable: this process never dereferences `addr`.
        let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
        match usize::try_from(n) {
            Ok(n) => return Ok(n),
            Err(_) => match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(e) => return Err(e),
                None => return Err(libc::EIO),
            },
        }
    }
}

/// A non-blocking, close-on-exec pipe, or `None` when the process has no descriptors left.
fn pipe() -> Option<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [-1; 2];
    // SAFETY: pipe2 writes two descriptors into the array we own.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if rc != 0 {
        return None;
    }
    // SAFETY: both descriptors were just opened by pipe2 and are owned by nothing else.
    Some(unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    })
}

/// Copies `buf.len()` bytes at `addr` through the pipe: `write` reads them in the kernel (EFAULT
/// when unreadable; the chunk lies in one page, so it is copied whole or not at all), `read`
/// takes them back out. The pipe holds 64 KiB, more than one chunk, so neither call blocks.
fn pipe_read(
    rd: &std::os::fd::OwnedFd,
    wr: &std::os::fd::OwnedFd,
    addr: usize,
    buf: &mut [u8],
) -> Option<usize> {
    use std::os::fd::AsRawFd;
    let written = loop {
        // SAFETY: write(2) reads `buf.len()` bytes at `addr` inside the kernel, which returns
        // EFAULT instead of faulting when they are not readable: this process never
        // dereferences `addr`.
        let n = unsafe { libc::write(wr.as_raw_fd(), addr as *const libc::c_void, buf.len()) };
        match usize::try_from(n) {
            Ok(n) => break n,
            Err(_) if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => {}
            Err(_) => return None,
        }
    };
    let mut done = 0;
    while done < written {
        let rest = buf.get_mut(done..written)?;
        // SAFETY: `rest` is a live, writable part of `buf` of `rest.len()` bytes.
        let n = unsafe { libc::read(rd.as_raw_fd(), rest.as_mut_ptr().cast(), rest.len()) };
        match usize::try_from(n) {
            Ok(0) => return None,
            Ok(n) => done += n,
            Err(_) if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => {}
            Err(_) => return None,
        }
    }
    (written == buf.len()).then_some(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::c_void;
    use std::ptr;

    #[test]
    fn init_args_rules() {
        extern "C" fn create(_: *mut *mut c_void) -> CK_RV {
            CKR_OK
        }
        extern "C" fn other(_: *mut c_void) -> CK_RV {
            CKR_OK
        }
        let none = CK_C_INITIALIZE_ARGS {
            CreateMutex: None,
            DestroyMutex: None,
            LockMutex: None,
            UnlockMutex: None,
            flags: 0,
            pReserved: ptr::null_mut(),
        };
        let all = CK_C_INITIALIZE_ARGS {
            CreateMutex: Some(create),
            DestroyMutex: Some(other),
            LockMutex: Some(other),
            UnlockMutex: Some(other),
            ..none
        };
        let some = CK_C_INITIALIZE_ARGS {
            LockMutex: None,
            ..all
        };
        let run = |a: &CK_C_INITIALIZE_ARGS| {
            // SAFETY: `a` is a live local; its pReserved is NULL or a NUL-terminated literal.
            unsafe { init_args(a) }.map_err(|e| e.ck_rv())
        };
        // SAFETY: NULL means defaults and is not read.
        assert_eq!(unsafe { init_args(ptr::null()) }.unwrap().config, None);
        assert_eq!(run(&none).unwrap().config, None);
        assert_eq!(
            run(&CK_C_INITIALIZE_ARGS {
                flags: CKF_LIBRARY_CANT_CREATE_OS_THREADS,
                ..none
            })
            .unwrap()
            .config,
            None
        );
        assert_eq!(run(&some).unwrap_err(), CKR_ARGUMENTS_BAD);
        assert_eq!(run(&all).unwrap_err(), CKR_CANT_LOCK);
        assert!(run(&CK_C_INITIALIZE_ARGS {
            flags: CKF_OS_LOCKING_OK,
            ..all
        })
        .is_ok());

        let conf = c"hsmpool:conf=/etc/hsmpool.toml";
        let with_conf = CK_C_INITIALIZE_ARGS {
            pReserved: conf.as_ptr().cast_mut().cast(),
            ..none
        };
        assert_eq!(
            run(&with_conf).unwrap().config.as_deref(),
            Some("conf=/etc/hsmpool.toml")
        );
        let foreign = c"something else";
        assert_eq!(
            run(&CK_C_INITIALIZE_ARGS {
                pReserved: foreign.as_ptr().cast_mut().cast(),
                ..none
            })
            .unwrap_err(),
            CKR_ARGUMENTS_BAD
        );
        let short = c"hsm";
        assert_eq!(
            run(&CK_C_INITIALIZE_ARGS {
                pReserved: short.as_ptr().cast_mut().cast(),
                ..none
            })
            .unwrap_err(),
            CKR_ARGUMENTS_BAD
        );
        let empty = c"hsmpool:";
        assert_eq!(
            run(&CK_C_INITIALIZE_ARGS {
                pReserved: empty.as_ptr().cast_mut().cast(),
                ..none
            })
            .unwrap()
            .config
            .as_deref(),
            Some("")
        );
    }

    #[test]
    fn caller_strings_are_copied_by_the_kernel_never_read() {
        let ok = c"hsmpool:conf=/x";
        assert_eq!(
            copy_caller_cstr(ok.as_ptr().cast(), 64).unwrap(),
            b"hsmpool:conf=/x"
        );
        let cut = copy_caller_cstr(ok.as_ptr().cast(), 4).unwrap_err();
        assert_eq!(cut.ck_rv(), CKR_ARGUMENTS_BAD, "no NUL within the bound");
        for bad in [1usize, 8, 4095, usize::MAX, usize::MAX - 7, 1 << 63] {
            let e = copy_caller_cstr(bad as *const u8, CONFIG_MAX_LEN).unwrap_err();
            assert_eq!(e.ck_rv(), CKR_ARGUMENTS_BAD, "address {bad:#x}");
        }
    }

    #[test]
    fn the_pipe_fallback_refuses_unreadable_memory_too() {
        let (rd, wr) = pipe().expect("a pipe");
        let src = *b"abcdefgh";
        let mut buf = [0u8; 8];
        assert_eq!(
            pipe_read(&rd, &wr, src.as_ptr() as usize, &mut buf),
            Some(8)
        );
        assert_eq!(&buf, b"abcdefgh");
        assert_eq!(pipe_read(&rd, &wr, 1, &mut buf[..1]), None);
        assert_eq!(pipe_read(&rd, &wr, usize::MAX, &mut buf[..1]), None);
        // The pipe is left empty and usable after a refusal.
        assert_eq!(
            pipe_read(&rd, &wr, src.as_ptr() as usize + 4, &mut buf[..4]),
            Some(4)
        );
        assert_eq!(&buf[..4], b"efgh");
    }
}
