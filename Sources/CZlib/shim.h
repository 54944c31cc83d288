#include <zlib.h>

/*
 * zlib's init functions are macros (they pass the library's version and z_stream's size),
 * which Swift cannot call: these wrappers make gzip streams (windowBits 15 + 16) and read
 * gzip or zlib streams (15 + 32: the header says which) for the scheduler's log archive
 * (Scheduler/Logs/Gzip.swift).
 */
static inline int kiln_deflate_init_gzip(z_streamp stream, int level) {
    return deflateInit2(stream, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
}

static inline int kiln_inflate_init_gzip(z_streamp stream) {
    return inflateInit2(stream, 15 + 32);
}
