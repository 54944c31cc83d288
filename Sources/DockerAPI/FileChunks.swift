import AsyncHTTPClient
import Foundation
import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// A file read in 256 KiB chunks, as a request body. Each read is a short blocking read of
/// a local file.
struct FileChunks: AsyncSequence, Sendable {
    typealias Element = ByteBuffer
    let path: String

    func makeAsyncIterator() -> Iterator { Iterator(path: path) }

    struct Iterator: AsyncIteratorProtocol {
        private final class Descriptor {
            let fd: Int32
            init(_ fd: Int32) { self.fd = fd }
            deinit { if fd >= 0 { close(fd) } }
        }
        private let path: String
        private var descriptor: Descriptor?
        private var done = false

        init(path: String) { self.path = path }

        mutating func next() async throws -> ByteBuffer? {
            if done { return nil }
            if descriptor == nil {
                let fd = open(path, O_RDONLY | O_CLOEXEC)
                guard fd >= 0 else { throw TarError("cannot read \(path): \(String(cString: strerror(errno)))") }
                descriptor = Descriptor(fd)
            }
            let fd = descriptor!.fd
            var buffer = ByteBuffer()
            var failure: Int32 = 0
            let count = buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: 1 << 18) { raw in
                var n: Int
                repeat { n = read(fd, raw.baseAddress, raw.count) } while n < 0 && errno == EINTR
                if n < 0 { failure = errno }
                return Swift.max(n, 0)
            }
            if failure != 0 { throw TarError("cannot read \(path): \(String(cString: strerror(failure)))") }
            if count == 0 {
                done = true
                descriptor = nil
                return nil
            }
            return buffer
        }
    }
}
