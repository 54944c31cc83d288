import AsyncHTTPClient
import Foundation
import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// The lines of a container's output (see `DockerClient.logs`).
public struct ContainerLogs: AsyncSequence, Sendable {
    public typealias Element = String
    let client: DockerClient
    let id: String
    let follow: Bool
    let stdout: Bool
    let stderr: Bool

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(logs: self)
    }

    public struct AsyncIterator: AsyncIteratorProtocol {
        private enum State {
            case idle
            case streaming(HTTPClientResponse.Body.AsyncIterator)
            case finished
        }
        private let logs: ContainerLogs
        private var state = State.idle
        private var demuxer = LogDemuxer()
        private var pending: [String] = []
        private var next = 0

        init(logs: ContainerLogs) { self.logs = logs }

        public mutating func next() async throws -> String? {
            while true {
                if next < pending.count {
                    defer { next += 1 }
                    return pending[next]
                }
                pending.removeAll(keepingCapacity: true)
                next = 0
                switch state {
                case .idle:
                    let operation = "read the logs of container \(logs.id)"
                    let response = try await logs.client.send(
                        .GET, "/containers/\(logs.client.escape(logs.id))/logs",
                        query: [
                            ("stdout", logs.stdout ? "1" : "0"), ("stderr", logs.stderr ? "1" : "0"),
                            ("follow", logs.follow ? "1" : "0"), ("timestamps", "0"),
                        ],
                        operation: operation, long: true)
                    if response.status.code != 200 { _ = try await logs.client.expect(response, [200], operation) }
                    state = .streaming(response.body.makeAsyncIterator())
                case .streaming(var body):
                    if let chunk = try await body.next() {
                        state = .streaming(body)
                        pending = demuxer.feed(chunk.readableBytesView)
                    } else {
                        state = .finished
                        pending = demuxer.finish()
                    }
                case .finished:
                    return nil
                }
            }
        }
    }
}

/// Splits the Docker log stream into lines: frames (see `LogFrames`) whose payloads are cut
/// into lines per stream, or raw bytes when the container has a TTY. podman labels both as
/// application/octet-stream, so the framing is recognised from the first header.
struct LogDemuxer {
    private var frames = LogFrames()
    private var raw = false
    private var stdout = LineSplitter()
    private var stderr = LineSplitter()

    mutating func feed(_ bytes: some Sequence<UInt8>) -> [String] {
        if raw { return stdout.feed(bytes: Array(bytes)) }
        var lines: [String] = []
        let framed = frames.feed(bytes) { stream, payload in
            if stream == 2 { lines += stderr.feed(buffer: payload) } else { lines += stdout.feed(buffer: payload) }
        }
        if !framed {
            raw = true
            return stdout.feed(bytes: frames.takeBuffer())
        }
        return lines
    }

    mutating func finish() -> [String] {
        // Fewer than 8 bytes in all: too short for a frame, so bare output.
        let rest = frames.takeBuffer()
        return (rest.isEmpty ? [] : stdout.feed(bytes: rest)) + stdout.finish() + stderr.finish()
    }
}

/// Frames of the Docker log stream: an 8-byte header ([stream, 0, 0, 0, size as big-endian
/// UInt32]) then the payload. A stream whose first 8 bytes are no such header is not framed
/// (a container with a TTY): `feed` returns false then, and keeps the bytes for `takeBuffer`.
/// Written over raw buffers: a flooded log has hundreds of thousands of frames, and this runs
/// unoptimised in debug builds too.
struct LogFrames {
    private enum Mode { case unknown, multiplexed, raw }
    private var mode = Mode.unknown
    private var buffer: [UInt8] = []

    /// Hands each whole frame the bytes complete to `each` (its payload valid only during the
    /// call), in order; false when the stream is not framed.
    mutating func feed(_ bytes: some Sequence<UInt8>, _ each: (UInt8, UnsafeBufferPointer<UInt8>) throws -> Void) rethrows -> Bool {
        buffer.append(contentsOf: bytes)
        if mode == .unknown {
            guard buffer.count >= 8 else { return true }
            mode = (buffer[0] <= 2 && buffer[1] == 0 && buffer[2] == 0 && buffer[3] == 0) ? .multiplexed : .raw
        }
        guard mode == .multiplexed else { return false }
        let consumed = try buffer.withUnsafeBufferPointer { all -> Int in
            var offset = 0
            while all.count - offset >= 8 {
                let size = Int(all[offset + 4]) << 24 | Int(all[offset + 5]) << 16 | Int(all[offset + 6]) << 8 | Int(all[offset + 7])
                guard all.count - offset - 8 >= size else { break }
                try each(all[offset], UnsafeBufferPointer(rebasing: all[(offset + 8)..<(offset + 8 + size)]))
                offset += 8 + size
            }
            return offset
        }
        buffer.removeFirst(consumed)
        return true
    }

    /// The bytes not yet part of a frame (all of them, for a stream that is not framed).
    mutating func takeBuffer() -> [UInt8] {
        defer { buffer.removeAll() }
        return mode == .multiplexed ? [] : buffer
    }
}

/// Cuts text into lines ("\n", a trailing "\r" dropped); a line longer than 1 MiB is cut there.
struct LineSplitter {
    static let maxLine = 1 << 20
    private var partial: [UInt8] = []

    mutating func feed(_ text: String) -> [String] { feed(bytes: Array(text.utf8)) }

    mutating func feed(bytes: [UInt8]) -> [String] {
        bytes.withUnsafeBufferPointer { feed(buffer: $0) }
    }

    mutating func feed(buffer: UnsafeBufferPointer<UInt8>) -> [String] {
        guard let base = buffer.baseAddress else { return [] }
        var lines: [String] = []
        var start = 0
        while start < buffer.count {
            let window = min(buffer.count - start, LineSplitter.maxLine - partial.count)
            guard let found = memchr(base + start, 0x0A, window) else {
                partial.append(contentsOf: UnsafeBufferPointer(start: base + start, count: window))
                start += window
                if partial.count >= LineSplitter.maxLine { lines.append(take()) }
                continue
            }
            let end = UnsafePointer(found.assumingMemoryBound(to: UInt8.self)) - base
            if partial.isEmpty {
                var line = UnsafeBufferPointer(start: base + start, count: end - start)
                if line.last == UInt8(ascii: "\r") { line = UnsafeBufferPointer(start: line.baseAddress, count: line.count - 1) }
                lines.append(String(decoding: line, as: UTF8.self))
            } else {
                partial.append(contentsOf: UnsafeBufferPointer(start: base + start, count: end - start))
                lines.append(take())
            }
            start = end + 1
        }
        return lines
    }

    mutating func finish() -> [String] {
        partial.isEmpty ? [] : [take()]
    }

    private mutating func take() -> String {
        if partial.last == UInt8(ascii: "\r") { partial.removeLast() }
        defer { partial.removeAll(keepingCapacity: true) }
        return String(decoding: partial, as: UTF8.self)
    }
}
