/*
 * init_reserved.c: C_Initialize must never read memory it cannot prove readable.
 *
 *   init_reserved <module.so>
 *
 * PKCS #11 3.0 §5.4.1 says CK_C_INITIALIZE_ARGS.pReserved must be NULL; conformance suites pass
 * (void*)1 and expect CKR_ARGUMENTS_BAD. hsmpool reads a non-NULL pReserved as its configuration
 * string ("hsmpool:conf=<path>"), so every other pointer value must be refused without a fault:
 * low addresses, (void*)-1, an unmapped page, a PROT_NONE page, and strings that run to the end
 * of a readable page without a NUL (our prefix and foreign text alike). Then a real configuration
 * string that crosses a page boundary, and one that ends on a page's last byte, must work.
 *
 * The module is configured through "hsmpool:conf=$HSMPOOL_CONF". The program is run plainly and
 * under valgrind (which must report no errors). It prints one line per check and ends with
 * "init_reserved: N passed, M failed"; the exit status is 0 only if nothing failed.
 */
#define _DEFAULT_SOURCE

#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

static int passed;
static int failed;

static void check_rv(CK_RV got, CK_RV want, const char *what)
{
    if (got == want) {
        printf("PASS: %s -> 0x%lx\n", what, (unsigned long)got);
        passed++;
    } else {
        printf("FAIL: %s -> 0x%lx, expected 0x%lx\n", what, (unsigned long)got,
               (unsigned long)want);
        failed++;
    }
    fflush(stdout);
}

static CK_FUNCTION_LIST *f;

/* C_Initialize with this pReserved; finalises again when it succeeded. */
static void init_with(void *reserved, CK_RV want, const char *what)
{
    CK_C_INITIALIZE_ARGS args;
    memset(&args, 0, sizeof args);
    args.flags = CKF_OS_LOCKING_OK;
    args.pReserved = reserved;
    CK_RV rv = f->C_Initialize(&args);
    check_rv(rv, want, what);
    if (rv == CKR_OK) {
        CK_INFO info;
        check_rv(f->C_GetInfo(&info), CKR_OK, "  C_GetInfo after it");
        check_rv(f->C_Finalize(NULL), CKR_OK, "  C_Finalize after it");
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s <module.so>\n", argv[0]);
        return 2;
    }
    const char *conf = getenv("HSMPOOL_CONF");
    if (!conf || !*conf) {
        fprintf(stderr, "HSMPOOL_CONF must name a configuration\n");
        return 2;
    }
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "dlopen %s: %s\n", argv[1], dlerror());
        return 2;
    }
    CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(lib, "C_GetFunctionList");
    if (!get || get(&f) != CKR_OK || !f) {
        fprintf(stderr, "C_GetFunctionList failed\n");
        return 2;
    }

    long page = sysconf(_SC_PAGESIZE);
    /* Three pages: [readable][readable][PROT_NONE], and a fourth unmapped after them. */
    unsigned char *map = mmap(NULL, (size_t)page * 4, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED) {
        perror("mmap");
        return 2;
    }
    unsigned char *second = map + page;
    unsigned char *guard = map + 2 * page;
    unsigned char *unmapped = map + 3 * page;
    if (mprotect(guard, (size_t)page, PROT_NONE) != 0 || munmap(unmapped, (size_t)page) != 0) {
        perror("mprotect/munmap");
        return 2;
    }

    /* Pointer values no caller may make us follow. */
    init_with((void *)1, CKR_ARGUMENTS_BAD, "pReserved = (void*)1");
    init_with((void *)8, CKR_ARGUMENTS_BAD, "pReserved = (void*)8");
    init_with((void *)4095, CKR_ARGUMENTS_BAD, "pReserved = (void*)4095");
    init_with((void *)(uintptr_t)-1, CKR_ARGUMENTS_BAD, "pReserved = (void*)-1");
    init_with((void *)((uintptr_t)-1 - 7), CKR_ARGUMENTS_BAD, "pReserved = (void*)-8");
    init_with((void *)(uintptr_t)0x8000000000000000ull, CKR_ARGUMENTS_BAD,
              "pReserved = a non-canonical address");
    init_with(guard, CKR_ARGUMENTS_BAD, "pReserved = a PROT_NONE page");
    init_with(unmapped, CKR_ARGUMENTS_BAD, "pReserved = an unmapped page");

    /* Strings that run into the PROT_NONE page without a NUL. */
    memset(second, 'x', (size_t)page);
    init_with(guard - 3, CKR_ARGUMENTS_BAD, "foreign text ending at a PROT_NONE page, no NUL");
    memcpy(guard - 8, "hsmpool:", 8);
    init_with(guard - 8, CKR_ARGUMENTS_BAD, "bare \"hsmpool:\" ending at a PROT_NONE page");
    const char *partial = "hsmpool:conf=/no/such/file/and/no/nul";
    size_t plen = strlen(partial);
    memcpy(guard - plen, partial, plen);
    init_with(guard - plen, CKR_ARGUMENTS_BAD,
              "\"hsmpool:conf=...\" ending at a PROT_NONE page, no NUL");
    memcpy(guard - 4, "hsm", 3);
    guard[-1] = 'p';
    init_with(guard - 4, CKR_ARGUMENTS_BAD, "a prefix cut short by a PROT_NONE page");
    /* A whole readable page without a NUL, longer than any configuration string we accept. */
    memset(map, 'y', (size_t)page);
    memcpy(map, "hsmpool:toml=", 13);
    init_with(map, CKR_ARGUMENTS_BAD, "\"hsmpool:toml=\" then two pages without a NUL");
    init_with("not hsmpool", CKR_ARGUMENTS_BAD, "a foreign NUL-terminated string");

    /* A real configuration string crossing from the first page into the second. */
    char good[4096];
    int n = snprintf(good, sizeof good, "hsmpool:conf=%s", conf);
    if (n <= 0 || (size_t)n >= sizeof good || n + 1 > page) {
        fprintf(stderr, "HSMPOOL_CONF is too long\n");
        return 2;
    }
    size_t glen = (size_t)n + 1;
    memcpy(second - glen / 2, good, glen);
    init_with(second - glen / 2, CKR_OK, "our configuration string across a page boundary");
    /* ... and one whose NUL is the last readable byte before the PROT_NONE page. */
    memcpy(guard - glen, good, glen);
    init_with(guard - glen, CKR_OK, "our configuration string ending at a PROT_NONE page");
    /* The module still works after all of that. */
    init_with(NULL, CKR_OK, "pReserved = NULL");

    printf("init_reserved: %d passed, %d failed\n", passed, failed);
    return failed == 0 && passed > 0 ? 0 : 1;
}
