import CZlib
import Foundation

/// gzip through the system's zlib (the `CZlib` target): what the local log archive stores,
/// so `zcat` reads an archive file.
enum Gzip {
    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// `data` as one gzip member.
    static func compress(_ data: [UInt8], level: Int32 = 6) throws -> [UInt8] {
        var stream = z_stream()
        guard kiln_deflate_init_gzip(&stream, level) == Z_OK else { throw Failure(description: "zlib could not start compressing") }
        defer { deflateEnd(&stream) }
        var out: [UInt8] = []
        // What deflate needs at most for the whole input, so one call does it (zlib's own bound).
        let bound = Int(deflateBound(&stream, uLong(data.count)))
        out = [UInt8](repeating: 0, count: bound)
        let status: Int32 = data.withUnsafeBufferPointer { input in
            out.withUnsafeMutableBufferPointer { output in
                stream.next_in = UnsafeMutablePointer(mutating: input.baseAddress)
                stream.avail_in = uInt(input.count)
                stream.next_out = output.baseAddress
                stream.avail_out = uInt(output.count)
                return deflate(&stream, Z_FINISH)
            }
        }
        guard status == Z_STREAM_END else { throw Failure(description: "zlib could not compress (status \(status))") }
        out.removeLast(Int(stream.avail_out))
        return out
    }

    /// The bytes of a gzip file: every member, one after the other. Throws on anything but
    /// whole, intact members (a cut file or one whose checksum fails), and once the output
    /// passes `limit` bytes (a corrupt or hostile file that would inflate without end).
    static func decompress(_ data: [UInt8], limit: Int) throws -> [UInt8] {
        guard !data.isEmpty else { throw Failure(description: "the file is empty") }
        var out: [UInt8] = []
        var offset = 0
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        // A file may hold several members (gzip's own rule; `cat a.gz b.gz` is valid).
        while offset < data.count {
            var stream = z_stream()
            guard kiln_inflate_init_gzip(&stream) == Z_OK else { throw Failure(description: "zlib could not start decompressing") }
            defer { inflateEnd(&stream) }
            var status: Int32 = Z_OK
            try data.withUnsafeBufferPointer { input in
                stream.next_in = UnsafeMutablePointer(mutating: input.baseAddress! + offset)
                stream.avail_in = uInt(input.count - offset)
                repeat {
                    let produced: Int = buffer.withUnsafeMutableBufferPointer { output in
                        stream.next_out = output.baseAddress
                        stream.avail_out = uInt(output.count)
                        status = inflate(&stream, Z_NO_FLUSH)
                        return output.count - Int(stream.avail_out)
                    }
                    guard status == Z_OK || status == Z_STREAM_END else {
                        let reason = status == Z_BUF_ERROR ? "it ends before its last block" : status == Z_DATA_ERROR ? "its data or checksum is wrong" : "zlib status \(status)"
                        throw Failure(description: "not an intact gzip file: \(reason)")
                    }
                    out.append(contentsOf: buffer[0..<produced])
                    if out.count > limit { throw Failure(description: "it inflates past \(limit) bytes") }
                    if status == Z_OK && stream.avail_in == 0 && produced < buffer.count {
                        throw Failure(description: "not an intact gzip file: it ends before its last block")
                    }
                } while status != Z_STREAM_END
                offset = input.count - Int(stream.avail_in)
            }
        }
        return out
    }
}
