#include <git2.h>
#include <git2/sys/stream.h>

/*
 * The agent's own standard (TCP) stream for libgit2, registered with git_stream_register
 * (BuildAgent/Git/GuardedStream.swift): it connects only to addresses the fetch policy
 * checked. libgit2 1.5's SSH transport casts a standard stream to its private
 * git_socket_stream (src/libgit2/streams/socket.h) and hands the descriptor `s` to libssh2,
 * so a replacement must have exactly that layout: the parent stream, host, port, socket.
 */
typedef struct kiln_socket_stream {
	git_stream parent;
	char *host;
	char *port;
	int s;
} kiln_socket_stream;
