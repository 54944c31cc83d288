import AsyncHTTPClient
import Foundation
import NIOCore

extension DockerClient {
    /// Pulls `image` ("registry/repository:tag") from its registry. `insecure`: the registry
    /// speaks plain HTTP (podman is told `tlsVerify=false`). Throws the engine's message when
    /// the image cannot be pulled (unknown repository or tag, registry down, credentials
    /// refused). `credentials` go to the engine as `X-Registry-Auth`; it asks the registry's
    /// token service with them.
    public func pull(_ image: String, insecure: Bool, credentials: RegistryCredentials? = nil, onLine: @Sendable (String) -> Void = { _ in }) async throws {
        let operation = "pull \(image)"
        var query = [("fromImage", image)]
        if insecure { query.append(("tlsVerify", "false")) }
        let response = try await send(
            .POST, "/images/create", query: query,
            headers: [("X-Registry-Auth", credentials?.registryAuthHeader ?? RegistryCredentials.anonymousHeader)],
            operation: operation, long: true)
        if response.status.code != 200 { _ = try await expect(response, [200], operation) }
        try await forEachMessage(response, operation) { message in
            if let error = message.errorMessage { throw DockerError(operation, nil, error.trimmingCharacters(in: .whitespacesAndNewlines)) }
            if let status = message.statusLine { onLine(status) }
        }
    }

    /// Builds an image from `contextDirectory` and tags it `tag`; returns the image id
    /// ("sha256:…").
    ///
    /// The context is sent as a tar archive (see `Tar`) without what its `.dockerignore`
    /// excludes; the Dockerfile and `.dockerignore` always go. Intermediate containers are
    /// removed, also when the build fails. Each output line goes to `onLine` as it arrives.
    ///
    /// - Parameters:
    ///   - dockerfile: the Dockerfile's path relative to the context.
    ///   - dockerfileText: sent as the Dockerfile instead of the file's own text (which is
    ///     then not read again): the text the caller checked.
    ///   - confinement: the network, limits and capabilities of the `RUN` steps.
    /// - Throws: `DockerError` with the builder's message when a step fails.
    public func build(
        contextDirectory: URL, dockerfile: String = "Dockerfile", dockerfileText: String? = nil, tag: String,
        confinement: BuildConfinement = BuildConfinement(), onLine: @Sendable (String) -> Void
    ) async throws -> String {
        let operation = "build \(tag)"
        if dockerfile.isEmpty || dockerfile.hasPrefix("/") || dockerfile.split(separator: "/").contains("..") {
            throw DockerError(operation, nil, "the Dockerfile path '\(dockerfile)' must be relative to the context and stay inside it")
        }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: contextDirectory.path, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw DockerError(operation, nil, "the context folder \(contextDirectory.path) does not exist")
        }
        guard FileManager.default.fileExists(atPath: contextDirectory.appendingPathComponent(dockerfile).path) else {
            throw DockerError(operation, nil, "there is no '\(dockerfile)' in the context folder \(contextDirectory.path)")
        }

        let archive = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-context-\(UUID().uuidString).tar")
        defer { try? FileManager.default.removeItem(at: archive) }
        let size: Int
        do {
            size = try await offThePool {
                let ignore = try DockerIgnore(contextDirectory: contextDirectory)
                try Tar.archive(directory: contextDirectory, to: archive, ignore: ignore, keep: [dockerfile, ".dockerignore"],
                                replacing: dockerfileText.map { [dockerfile: Array($0.utf8)] } ?? [:])
                let attributes = try FileManager.default.attributesOfItem(atPath: archive.path)
                return (attributes[.size] as? NSNumber)?.intValue ?? 0
            }
        } catch {
            throw DockerError(operation, nil, "cannot pack the build context: \(error)")
        }

        let response = try await send(
            .POST, "/build",
            query: [("t", tag), ("dockerfile", dockerfile), ("rm", "1"), ("forcerm", "1")] + confinement.queryItems,
            headers: [("Content-Type", "application/x-tar")],
            body: .stream(FileChunks(path: archive.path), length: .known(Int64(size))),
            operation: operation, long: true)
        if response.status.code != 200 { _ = try await expect(response, [200], operation) }

        var imageID: String?
        var lastBuilt: String?
        var text = LineSplitter()
        func emit(_ line: String) {
            if line.hasPrefix("Successfully built ") { lastBuilt = String(line.dropFirst("Successfully built ".count)) }
            onLine(line)
        }
        try await forEachMessage(response, operation) { message in
            if let error = message.errorMessage { throw DockerError(operation, nil, error.trimmingCharacters(in: .whitespacesAndNewlines)) }
            if let stream = message.stream { text.feed(stream).forEach(emit) }
            if let status = message.statusLine { emit(status) }
            if let id = message.aux?.ID { imageID = id }
        }
        text.finish().forEach(emit)
        if let imageID { return imageID }
        // No aux message (older engines): the success line names the image by its short id.
        // (Not the tag: after a broken-off build it may still name an older image.)
        guard let lastBuilt, !lastBuilt.isEmpty, lastBuilt.allSatisfy(\.isHexDigit) else {
            throw DockerError(operation, nil, "the build ended without naming an image")
        }
        let inspect = try await send(.GET, "/images/\(escapePath(lastBuilt))/json", operation: operation)
        let data = try await expect(inspect, [200], operation)
        struct Inspected: Decodable { let Id: String }
        guard let inspected = try? JSONDecoder().decode(Inspected.self, from: data) else {
            throw DockerError(operation, 200, "unexpected answer: \(String(decoding: data, as: UTF8.self))")
        }
        return inspected.Id
    }

    /// Pushes `image:tag` (the image must be named for its registry, "127.0.0.1:5000/app")
    /// and returns the manifest digest if the API reported it (podman says it in a status
    /// line, dockerd in an `aux` message), else nil: then ask `registryDigest`.
    ///
    /// A push the registry refuses (wrong credentials, a token without `push`) is an error:
    /// podman answers such a push with HTTP 200 and an error line in the stream, which is read.
    ///
    /// - Parameters:
    ///   - insecure: the registry speaks plain HTTP (podman is told `tlsVerify=false`;
    ///     dockerd must list it under insecure-registries, 127.0.0.0/8 is by default).
    ///   - credentials: sent as `X-Registry-Auth`; the engine gets a token with them.
    public func push(image: String, tag: String, insecure: Bool, credentials: RegistryCredentials? = nil, onLine: @Sendable (String) -> Void) async throws -> String? {
        let operation = "push \(image):\(tag)"
        var query = [("tag", tag)]
        if insecure { query.append(("tlsVerify", "false")) }
        let response = try await send(
            .POST, "/images/\(escapePath(image))/push", query: query,
            headers: [("X-Registry-Auth", credentials?.registryAuthHeader ?? RegistryCredentials.anonymousHeader)],
            operation: operation, long: true)
        if response.status.code != 200 { _ = try await expect(response, [200], operation) }
        var digest: String?
        try await forEachMessage(response, operation) { message in
            if let error = message.errorMessage { throw DockerError(operation, nil, error.trimmingCharacters(in: .whitespacesAndNewlines)) }
            if let status = message.statusLine {
                onLine(status)
                if let found = DockerClient.digest(in: status) { digest = found }
            }
            if let found = message.aux?.Digest { digest = found }
        }
        return digest
    }

    /// Gives the image `source` (a name or an ID) the further name `repository:tag`, as
    /// `docker tag` does; the image's other names stay.
    public func tag(_ source: String, repository: String, tag: String) async throws {
        let operation = "tag \(source) as \(repository):\(tag)"
        let response = try await send(.POST, "/images/\(escapePath(source))/tag", query: [("repo", repository), ("tag", tag)], operation: operation)
        _ = try await expect(response, [200, 201], operation)
    }

    /// Whether the engine has an image of this name or id.
    public func imageExists(_ name: String) async throws -> Bool {
        let operation = "inspect image \(name)"
        let response = try await send(.GET, "/images/\(escapePath(name))/json", operation: operation)
        let status = response.status.code
        _ = try await expect(response, [200, 404], operation)
        return status == 200
    }

    /// Removes an image (`force`: also when containers use it or it has other names).
    /// An image that does not exist is not an error.
    public func removeImage(_ name: String, force: Bool) async throws {
        let operation = "remove image \(name)"
        let response = try await send(
            .DELETE, "/images/\(escapePath(name))", query: [("force", force ? "true" : "false")],
            operation: operation, timeout: .seconds(120))
        _ = try await expect(response, [200, 404], operation)
    }
}
