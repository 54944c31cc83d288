import Foundation

extension DockerClient {
    /// The ID ("sha256:…") of the image the engine has under `name` (a name, a name with a
    /// tag or digest, or an ID), or nil when it has none. Never pulls.
    public func imageID(_ name: String) async throws -> String? {
        struct Inspected: Decodable { let Id: String }
        return try await inspectImage(name, as: Inspected.self)?.Id
    }

    /// The user the image's containers run as (its configuration's `User`: a name or a uid,
    /// with an optional `:group`; empty for root), or nil when the engine has no such image.
    public func imageUser(_ name: String) async throws -> String? {
        struct Inspected: Decodable {
            struct Config: Decodable { let User: String? }
            let Config: Config?
        }
        return try await inspectImage(name, as: Inspected.self).map { $0.Config?.User ?? "" }
    }

    /// `GET /images/{name}/json` read as `T`; nil when the engine has no such image.
    private func inspectImage<T: Decodable>(_ name: String, as type: T.Type) async throws -> T? {
        let operation = "inspect image \(name)"
        let response = try await send(.GET, "/images/\(escapePath(name))/json", operation: operation)
        let status = response.status.code
        let data = try await expect(response, [200, 404], operation)
        guard status == 200 else { return nil }
        guard let inspected = try? JSONDecoder().decode(T.self, from: data) else {
            throw DockerError(operation, 200, "unexpected answer: \(String(decoding: data.prefix(300), as: UTF8.self))")
        }
        return inspected
    }

    /// The ONBUILD triggers of the image `id` (its configuration's `config.OnBuild`), in order.
    ///
    /// Read from the image's export (`GET /images/{id}/get`, a docker-archive): podman 4.3
    /// leaves OnBuild out of both its inspect answers (the compat one says `null`, the libpod
    /// one has no such field; checked here against an image with two triggers), so the image's
    /// configuration itself is read. The export holds the configuration as the file the
    /// archive's `manifest.json` names, `<id>.json` (podman, dockerd before 25) or
    /// `blobs/sha256/<id>` (dockerd 25's OCI layout); a name without the ID is refused.
    /// podman writes the whole archive before it sends it, layers first: this takes about as
    /// long as the image is big (4.8 s for 351 MB here). The answer never changes for one ID
    /// (the ID is the digest of the configuration): cache it by ID.
    public func imageTriggers(id: String) async throws -> [String] {
        let operation = "read the configuration of image \(id)"
        let hex = id.hasPrefix("sha256:") ? String(id.dropFirst(7)) : id
        guard hex.count == 64, hex.allSatisfy(\.isHexDigit) else {
            throw DockerError(operation, nil, "'\(id)' is not a full image ID")
        }
        let response = try await send(.GET, "/images/\(escapePath(id))/get", operation: operation, long: true)
        if response.status.code != 200 { _ = try await expect(response, [200], operation) }
        var archive = TarEntries(keepUpTo: 1 << 20) { $0 == "manifest.json" || $0.contains(hex) }
        do {
            for try await chunk in response.body { try archive.feed(chunk.readableBytesView) }
        } catch let error as TarError {
            throw DockerError(operation, 200, "the image's export is not a tar archive: \(error)")
        }
        struct Entry: Decodable { let Config: String }
        struct Config: Decodable {
            struct Inner: Decodable { let OnBuild: [String]? }
            let config: Inner?
        }
        guard let manifestData = archive.kept["manifest.json"],
              let manifest = try? JSONDecoder().decode([Entry].self, from: manifestData), manifest.count == 1
        else {
            throw DockerError(operation, 200, "the image's export has no manifest.json naming one image")
        }
        let configName = manifest[0].Config
        guard configName.contains(hex), let configData = archive.kept[configName] else {
            throw DockerError(operation, 200, "the image's export names its configuration '\(configName)', which is not the configuration of \(id)")
        }
        do {
            return try JSONDecoder().decode(Config.self, from: configData).config?.OnBuild ?? []
        } catch {
            throw DockerError(operation, 200, "the image's configuration is not JSON: \(error)")
        }
    }
}

/// Reads a tar stream as it arrives and keeps the regular files whose names `keep` accepts
/// and that are at most `keepUpTo` bytes (an image's JSON files, not its layers, which are
/// skipped as they pass). Entries are taken by the sizes in their headers, so the bytes of a
/// layer are never read as headers. PAX headers may give the next entry's name.
struct TarEntries {
    let keepUpTo: Int
    let keep: (String) -> Bool
    private(set) var kept: [String: Data] = [:]

    private enum State {
        case header
        /// The rest of an entry: `remaining` bytes of content, then `padding` bytes.
        case content(name: String, type: UInt8, remaining: Int, padding: Int, data: Data?)
        case end
    }
    private var state = State.header
    private var pending: [UInt8] = []
    private var paxPath: String?

    init(keepUpTo: Int, keep: @escaping (String) -> Bool) {
        self.keepUpTo = keepUpTo
        self.keep = keep
    }

    mutating func feed(_ bytes: some Collection<UInt8>) throws {
        var input = ArraySlice(bytes)
        while !input.isEmpty {
            switch state {
            case .end:
                return
            case .header:
                let need = 512 - pending.count
                pending += input.prefix(need)
                input = input.dropFirst(need)
                guard pending.count == 512 else { return }
                let block = pending
                pending = []
                try header(block)
            case .content(let name, let type, var remaining, var padding, var data):
                let n = min(remaining, input.count)
                data?.append(contentsOf: input.prefix(n))
                input = input.dropFirst(n)
                remaining -= n
                let p = min(padding, input.count)
                input = input.dropFirst(p)
                padding -= p
                if remaining == 0 && padding == 0 {
                    finishEntry(name: name, type: type, data: data)
                    state = .header
                } else {
                    state = .content(name: name, type: type, remaining: remaining, padding: padding, data: data)
                }
            }
        }
    }

    private mutating func header(_ block: [UInt8]) throws {
        if block.allSatisfy({ $0 == 0 }) {
            state = .end
            return
        }
        func field(_ offset: Int, _ length: Int) -> String {
            String(decoding: block[offset..<(offset + length)].prefix { $0 != 0 }, as: UTF8.self)
        }
        let checksum = Int(field(148, 8).trimmingCharacters(in: .whitespaces), radix: 8)
        let sum = block.enumerated().reduce(0) { $0 + (148..<156 ~= $1.offset ? 32 : Int($1.element)) }
        guard checksum == sum else { throw TarError("a header's checksum does not match") }
        guard let size = Int(field(124, 12).trimmingCharacters(in: .whitespaces).ifEmpty("0"), radix: 8), size >= 0 else {
            throw TarError("a header's size is not an octal number")
        }
        let type = block[156]
        var name = field(0, 100)
        let prefix = field(345, 155)
        if block[257..<262].elementsEqual("ustar".utf8), !prefix.isEmpty { name = prefix + "/" + name }
        if let paxPath, type != UInt8(ascii: "x") {
            name = paxPath
            self.paxPath = nil
        }
        let isFile = type == UInt8(ascii: "0") || type == 0 || type == UInt8(ascii: "x")
        let wanted = isFile && size <= keepUpTo && (type == UInt8(ascii: "x") || keep(name))
        let padding = (512 - size % 512) % 512
        state = .content(name: name, type: type, remaining: size, padding: padding, data: wanted ? Data() : nil)
        if size + padding == 0 {
            finishEntry(name: name, type: type, data: wanted ? Data() : nil)
            state = .header
        }
    }

    private mutating func finishEntry(name: String, type: UInt8, data: Data?) {
        guard let data else { return }
        if type == UInt8(ascii: "x") {
            // Records "<length> <key>=<value>\n": only the path matters here.
            for record in String(decoding: data, as: UTF8.self).split(separator: "\n") {
                if let eq = record.firstIndex(of: "="), record[..<eq].hasSuffix(" path") {
                    paxPath = String(record[record.index(after: eq)...])
                }
            }
        } else {
            kept[name] = data
        }
    }
}

private extension String {
    func ifEmpty(_ other: String) -> String { isEmpty ? other : self }
}
