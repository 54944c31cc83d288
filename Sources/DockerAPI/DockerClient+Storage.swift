import Foundation

/// One image in an `images()` answer.
public struct ImageSummary: Decodable, Sendable, Equatable {
    /// "sha256:…".
    public let id: String
    /// Its names ("localhost/kiln/busybox:1"); empty for an untagged image.
    public let names: [String]

    enum CodingKeys: String, CodingKey { case id = "Id", names = "RepoTags" }

    public init(id: String, names: [String]) {
        self.id = id
        self.names = names
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        id = try c.decode(String.self, forKey: .id)
        // dockerd names an untagged image "<none>:<none>"; podman leaves the list empty or null.
        names = (try c.decodeIfPresent([String].self, forKey: .names) ?? []).filter { $0 != "<none>:<none>" }
    }
}

extension DockerClient {
    /// The tagged images of the engine's storage (`GET /images/json`; intermediate images,
    /// which have no name, are left out by the engine).
    public func images() async throws -> [ImageSummary] {
        let operation = "list images"
        let response = try await send(.GET, "/images/json", operation: operation)
        let data = try await expect(response, [200], operation)
        do {
            return try JSONDecoder().decode([ImageSummary].self, from: data)
        } catch {
            throw DockerError(operation, 200, "unexpected answer: \(String(decoding: data.prefix(300), as: UTF8.self))")
        }
    }

    /// The folder the engine keeps its images in (`GET /info`'s `DockerRootDir`: podman's
    /// graphroot, dockerd's data root), or nil when the engine does not say. A path on the
    /// engine's machine: the caller checks that it is its own machine's before reading it.
    public func storageRoot() async throws -> String? {
        let operation = "engine info"
        let response = try await send(.GET, "/info", operation: operation)
        let data = try await expect(response, [200], operation)
        struct Info: Decodable { let DockerRootDir: String? }
        guard let info = try? JSONDecoder().decode(Info.self, from: data) else {
            throw DockerError(operation, 200, "unexpected answer: \(String(decoding: data.prefix(300), as: UTF8.self))")
        }
        return info.DockerRootDir.flatMap { $0.isEmpty ? nil : $0 }
    }
}
