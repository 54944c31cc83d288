@testable import BuildAgent
import CLibGit2
import Testing

/// libgit2 1.5's SSH transport takes the socket for libssh2 out of the standard stream by
/// casting it to its private `git_socket_stream` (src/libgit2/transports/ssh.c,
/// `_git_ssh_session_create`: `GIT_CONTAINER_OF(io, git_socket_stream, parent)`, then
/// `socket->s`), and `git_socket_stream_new` hands out the registered standard stream
/// (src/libgit2/streams/socket.c). So the agent's stream (`GuardedStream`) must have that
/// layout, or an SSH fetch reads garbage as its descriptor.
@Suite("GuardedStream: the layout libgit2's SSH transport reads")
struct GuardedStreamLayoutTests {
    @Test("kiln_socket_stream is git_socket_stream: the parent stream, host, port, then the socket")
    func layout() throws {
        #expect(MemoryLayout<kiln_socket_stream>.offset(of: \.parent) == 0)
        let pointer = MemoryLayout<UnsafeMutablePointer<CChar>>.size
        #expect(MemoryLayout<kiln_socket_stream>.offset(of: \.host) == MemoryLayout<git_stream>.size)
        #expect(MemoryLayout<kiln_socket_stream>.offset(of: \.port) == MemoryLayout<git_stream>.size + pointer)
        #expect(MemoryLayout<kiln_socket_stream>.offset(of: \.s) == MemoryLayout<git_stream>.size + 2 * pointer)
        #expect(MemoryLayout<Int32>.size == MemoryLayout.size(ofValue: kiln_socket_stream().s), "GIT_SOCKET is an int on Unix")
    }

    @Test("the libgit2 linked is one whose private layout was checked (1.5 to 1.9): recheck shim.h before changing this")
    func checkedVersion() {
        var major: Int32 = 0, minor: Int32 = 0, revision: Int32 = 0
        git_libgit2_version(&major, &minor, &revision)
        #expect(major == 1 && (5...9).contains(minor), "libgit2 \(major).\(minor).\(revision): check git_socket_stream in src/libgit2/streams/socket.h and its use in the ssh transport")
    }
}
