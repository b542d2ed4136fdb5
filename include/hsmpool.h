/*
 * hsmpool.h: hsmpool's vendor extensions to PKCS #11, and nothing else.
 *
 * Standard PKCS #11 declarations come from your pkcs11.h (for example p11-kit's,
 * <p11-kit/pkcs11.h>); this header only adds what is specific to libhsmpool_pkcs11.so.
 * The C calling contract (NULLs, buffers, threads, fork) is in cdylib/README.md.
 */
#ifndef HSMPOOL_H
#define HSMPOOL_H

/*
 * C_Initialize configuration string.
 *
 * Pass a NUL-terminated string starting with this prefix as CK_C_INITIALIZE_ARGS.pReserved;
 * the rest of the string goes to the engine's configuration, for example:
 *
 *     CK_C_INITIALIZE_ARGS args = { 0 };
 *     args.flags = CKF_OS_LOCKING_OK;
 *     args.pReserved = (CK_VOID_PTR)HSMPOOL_CONFIG_PREFIX "conf=/etc/hsmpool/hsmpool.toml";
 *     rv = C_Initialize(&args);
 *
 * Any other non-NULL pReserved is refused with CKR_ARGUMENTS_BAD. At most 4096 bytes, NUL
 * included, are read; the rest must be UTF-8.
 */
#define HSMPOOL_CONFIG_PREFIX "hsmpool:"

/*
 * Vendor-defined constants (CKA_VENDOR_DEFINED / CKR_VENDOR_DEFINED ranges) will be listed here.
 * None are defined yet.
 */

#endif /* HSMPOOL_H */
