import AsyncHTTPClient
import Foundation
import NIOCore

/// One object of the JSON stream `/build` and `/images/…/push` answer with.
struct StreamMessage: Decodable {
    struct Detail: Decodable { let message: String? }
    struct Aux: Decodable {
        let ID: String?
        let Digest: String?
    }
    var stream: String?
    var status: String?
    var id: String?
    var progress: String?
    var error: String?
    var errorDetail: Detail?
    var aux: Aux?

    enum CodingKeys: String, CodingKey { case stream, status, id, progress, error, errorDetail, aux }

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        stream = try? c.decodeIfPresent(String.self, forKey: .stream)
        status = try? c.decodeIfPresent(String.self, forKey: .status)
        id = try? c.decodeIfPresent(String.self, forKey: .id)
        progress = try? c.decodeIfPresent(String.self, forKey: .progress)
        error = try? c.decodeIfPresent(String.self, forKey: .error)
        errorDetail = try? c.decodeIfPresent(Detail.self, forKey: .errorDetail)
        aux = try? c.decodeIfPresent(Aux.self, forKey: .aux)  // BuildKit sends other shapes
    }

    var errorMessage: String? {
        if let error, !error.isEmpty { return error }
        if let message = errorDetail?.message, !message.isEmpty { return message }
        return nil
    }

    /// A status message as a log line; progress-bar updates are left out.
    var statusLine: String? {
        guard let status, !status.isEmpty, progress == nil || progress!.isEmpty else { return nil }
        if let id, !id.isEmpty { return "\(id): \(status)" }
        return status
    }
}

/// Cuts a byte stream into top-level JSON values, whatever the chunking and separators.
struct JSONStreamSplitter {
    private var buffer: [UInt8] = []
    private var scanned = 0
    private var depth = 0
    private var inString = false
    private var escaped = false
    private var start = 0

    mutating func feed(_ bytes: some Sequence<UInt8>) -> [[UInt8]] {
        buffer.append(contentsOf: bytes)
        var values: [[UInt8]] = []
        var i = scanned
        while i < buffer.count {
            let byte = buffer[i]
            if inString {
                if escaped { escaped = false }
                else if byte == UInt8(ascii: "\\") { escaped = true }
                else if byte == UInt8(ascii: "\"") { inString = false }
            } else {
                switch byte {
                case UInt8(ascii: "\""):
                    inString = true
                case UInt8(ascii: "{"), UInt8(ascii: "["):
                    if depth == 0 { start = i }
                    depth += 1
                case UInt8(ascii: "}"), UInt8(ascii: "]"):
                    depth -= 1
                    if depth == 0 { values.append(Array(buffer[start...i])) }
                    if depth < 0 { depth = 0 }
                default:
                    break
                }
            }
            i += 1
        }
        // Keep only the value in progress.
        let keepFrom = depth > 0 ? start : buffer.count
        buffer.removeFirst(keepFrom)
        start -= keepFrom
        if start < 0 { start = 0 }
        scanned = buffer.count
        return values
    }

    /// Bytes of an unfinished value at the end of the stream (normally none).
    var remainder: String {
        String(decoding: buffer, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }
}
