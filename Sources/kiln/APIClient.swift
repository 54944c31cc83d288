import AsyncHTTPClient
import Foundation
import KilnCore
import NIOCore
import NIOFoundationCompat

/// The CLI's client of the scheduler's HTTP API.
struct APIClient: Sendable {
    let base: String

    init(_ base: String) {
        var b = base
        while b.hasSuffix("/") { b.removeLast() }
        self.base = b
    }

    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    func get<T: Decodable>(_ path: String, as: T.Type) async throws -> T {
        try decode(T.self, try await send("GET", path, body: nil))
    }

    func post<T: Decodable>(_ path: String, body: (some Encodable)?, as: T.Type) async throws -> T {
        let data = try body.map { try KilnJSON.encoder().encode($0) }
        return try decode(T.self, try await send("POST", path, body: data))
    }

    /// A request to any URL (not the API), with a Host header: the body as text. Throws on a
    /// status other than 2xx unless `anyStatus`.
    func rawText(_ method: String, _ url: String, host: String, anyStatus: Bool = false, closeConnection: Bool = false) async throws -> String {
        var request = HTTPClientRequest(url: url)
        request.method = .init(rawValue: method)
        request.headers.add(name: "Host", value: host)
        if closeConnection { request.headers.add(name: "Connection", value: "close") }
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(10))
        let body = String(buffer: try await response.body.collect(upTo: 1 << 20))
        guard anyStatus || (200..<300).contains(Int(response.status.code)) else {
            throw Failure(description: "\(method) \(url) (Host \(host)): HTTP \(response.status.code) \(body.prefix(200))")
        }
        return body
    }

    func raw(_ method: String, _ path: String, body: Data? = nil) async throws -> Data {
        try await send(method, path, body: body)
    }

    private func send(_ method: String, _ path: String, body: Data?) async throws -> Data {
        var request = HTTPClientRequest(url: base + path)
        request.method = .init(rawValue: method)
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(data: body))
        }
        let response: HTTPClientResponse
        do {
            response = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
        } catch {
            throw Failure(description: "cannot reach the Kiln API at \(base) (\(error)). Is `kiln scheduler` (or `kiln up`) running? Pass --api or set KILN_API.")
        }
        let buffer = try await response.body.collect(upTo: 64 << 20)
        let data = Data(buffer: buffer)
        guard (200..<300).contains(Int(response.status.code)) else {
            if let e = try? JSONDecoder().decode([String: String].self, from: data), let message = e["error"] {
                throw Failure(description: message)
            }
            throw Failure(description: "\(method) \(path): HTTP \(response.status.code)")
        }
        return data
    }

    private func decode<T: Decodable>(_ type: T.Type, _ data: Data) throws -> T {
        do {
            return try KilnJSON.decoder().decode(type, from: data)
        } catch {
            throw Failure(description: "the API answered something this kiln cannot read (\(error)); is it the same version?")
        }
    }

    /// Streams a build's log to `output` until the build ends.
    func followLog(_ id: String, output: @Sendable (String) -> Void) async throws {
        let request = HTTPClientRequest(url: base + "/api/v1/builds/\(id)/log?follow=1")
        let response = try await HTTPClient.shared.execute(request, timeout: .hours(24))
        guard response.status == .ok else {
            let body = try await response.body.collect(upTo: 1 << 20)
            throw Failure(description: "log of \(id): HTTP \(response.status.code) \(String(buffer: body))")
        }
        for try await chunk in response.body {
            output(String(buffer: chunk))
        }
    }
}

/// What the CLI prints of builds and agents.
enum Show {
    static func seconds(_ ms: Int?) -> String {
        guard let ms else { return "-" }
        return String(format: "%.2fs", Double(ms) / 1000)
    }

    static func steps(_ b: Build) -> String {
        b.steps.map { "\($0.name.rawValue) \($0.status == .succeeded ? seconds($0.durationMs) : $0.status.rawValue)" }.joined(separator: "  ")
    }

    static func summary(_ b: Build) -> String {
        var lines = ["build \(b.id)  \(b.project)  \(b.status.rawValue.uppercased())"]
        lines.append("  ref \(b.ref)  commit \(b.commit.map { String($0.prefix(12)) } ?? "-")  tag \(b.tag ?? "-")  mvncache \(b.mvncache ? "on" : "off")  agent \(b.agent ?? "-")  attempt \(b.attempt)")
        for s in b.steps {
            lines.append("  \(s.name.rawValue.padding(toLength: 8, withPad: " ", startingAt: 0)) \(s.status.rawValue.padding(toLength: 10, withPad: " ", startingAt: 0)) \(seconds(s.durationMs))\(s.error.map { "  \($0)" } ?? "")")
        }
        if let d = b.durationMs { lines.append("  total    \(seconds(d))") }
        if let image = b.image { lines.append("  image    \(image)") }
        if let digest = b.digest { lines.append("  digest   \(digest)") }
        if let e = b.error, b.status != .succeeded { lines.append("  error    \(e)") }
        if let run = b.deploy { lines += pipeline(run) }
        return lines.joined(separator: "\n")
    }

    /// A pipeline run's lines for a build's summary.
    static func pipeline(_ run: PipelineRun) -> [String] {
        var lines = ["  pipeline run \(run.run) (\(run.trigger))  \(run.status.rawValue.uppercased())\(run.durationMs.map { "  \(seconds($0))" } ?? "")"]
        for s in run.steps {
            let what = s.error ?? s.summary
            lines.append("    \(s.plugin.padding(toLength: 8, withPad: " ", startingAt: 0)) \(s.status.rawValue.padding(toLength: 10, withPad: " ", startingAt: 0)) \(seconds(s.durationMs))\(what.map { "  \($0)" } ?? "")")
        }
        return lines
    }

    static func printJSON<T: Encodable>(_ value: T) {
        if let data = try? KilnJSON.encoder(pretty: true).encode(value) { print(String(decoding: data, as: UTF8.self)) }
    }
}
