import AsyncHTTPClient
import Foundation
import NIOCore

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

/// Splits the Docker log stream into lines: frames of an 8-byte header ([stream, 0, 0, 0,
/// size as big-endian UInt32]) then the payload, or raw bytes when the container has a TTY.
/// podman labels both as application/octet-stream, so the framing is recognised from the
/// first header.
struct LogDemuxer {
    private enum Mode { case unknown, multiplexed, raw }
    private var mode = Mode.unknown
    private var buffer: [UInt8] = []
    private var stdout = LineSplitter()
    private var stderr = LineSplitter()

    mutating func feed(_ bytes: some Sequence<UInt8>) -> [String] {
        buffer.append(contentsOf: bytes)
        if mode == .unknown {
            guard buffer.count >= 8 else { return [] }
            mode = (buffer[0] <= 2 && buffer[1] == 0 && buffer[2] == 0 && buffer[3] == 0) ? .multiplexed : .raw
        }
        if mode == .raw {
            defer { buffer.removeAll(keepingCapacity: true) }
            return stdout.feed(bytes: buffer)
        }
        var lines: [String] = []
        var offset = 0
        while buffer.count - offset >= 8 {
            let size = Int(buffer[offset + 4]) << 24 | Int(buffer[offset + 5]) << 16 | Int(buffer[offset + 6]) << 8 | Int(buffer[offset + 7])
            guard buffer.count - offset - 8 >= size else { break }
            let payload = buffer[(offset + 8)..<(offset + 8 + size)]
            if buffer[offset] == 2 { lines += stderr.feed(bytes: payload) } else { lines += stdout.feed(bytes: payload) }
            offset += 8 + size
        }
        buffer.removeFirst(offset)
        return lines
    }

    mutating func finish() -> [String] {
        if mode != .multiplexed && !buffer.isEmpty {
            let rest = stdout.feed(bytes: buffer)
            buffer.removeAll()
            return rest + stdout.finish()
        }
        return stdout.finish() + stderr.finish()
    }
}

/// Cuts text into lines ("\n", a trailing "\r" dropped); a line longer than 1 MiB is cut there.
struct LineSplitter {
    static let maxLine = 1 << 20
    private var partial: [UInt8] = []

    mutating func feed(_ text: String) -> [String] { feed(bytes: text.utf8) }

    mutating func feed(bytes: some Sequence<UInt8>) -> [String] {
        var lines: [String] = []
        for byte in bytes {
            if byte == UInt8(ascii: "\n") {
                lines.append(take())
            } else {
                partial.append(byte)
                if partial.count >= LineSplitter.maxLine { lines.append(take()) }
            }
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
