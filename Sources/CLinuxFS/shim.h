#include <sys/mount.h>
#include <sys/xattr.h>

/*
 * Extended attributes (Glibc's Swift module does not export <sys/xattr.h>): the agent reads
 * and removes overlayfs' `trusted.overlay.opaque` when it folds a build's cache layer into the
 * project's cache (BuildAgent/Sandbox/CacheLayers.swift).
 */
