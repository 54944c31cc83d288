import Foundation

extension DockerClient {
    /// Creates a container (not started) and returns its id.
    public func createContainer(_ spec: ContainerSpec, name: String? = nil) async throws -> String {
        let operation = "create container from \(spec.image)"
        var query: [(String, String)] = []
        if let name { query.append(("name", name)) }
        let body = try JSONEncoder().encode(CreateContainerBody(spec))
        let response = try await send(.POST, "/containers/create", query: query, json: body, operation: operation)
        let data = try await expect(response, [201, 200], operation)
        struct Created: Decodable { let Id: String }
        guard let created = try? JSONDecoder().decode(Created.self, from: data) else {
            throw DockerError(operation, Int(response.status.code), "unexpected answer: \(String(decoding: data, as: UTF8.self))")
        }
        return created.Id
    }

    /// Starts a created container (a container already running is not an error).
    public func start(_ id: String) async throws {
        let operation = "start container \(id)"
        let response = try await send(.POST, "/containers/\(escape(id))/start", operation: operation)
        _ = try await expect(response, [204, 304], operation)
    }

    /// Waits until the container stops and returns its exit code.
    public func wait(_ id: String) async throws -> Int {
        let operation = "wait for container \(id)"
        while true {
            do {
                let response = try await send(.POST, "/containers/\(escape(id))/wait", operation: operation, long: true)
                let data = try await expect(response, [200], operation)
                struct Waited: Decodable {
                    struct Failure: Decodable { let Message: String? }
                    let StatusCode: Int
                    let Error: Failure?
                }
                guard let waited = try? JSONDecoder().decode(Waited.self, from: data) else {
                    throw DockerError(operation, 200, "unexpected answer: \(String(decoding: data, as: UTF8.self))")
                }
                if let message = waited.Error?.Message, !message.isEmpty {
                    throw DockerError(operation, 200, message)
                }
                return waited.StatusCode
            } catch let error as DockerError where error.isReadTimeout {
                continue  // a client with a read timeout: waiting is idempotent, ask again
            }
        }
    }

    /// The container's output, one line at a time, stdout and stderr together (each line
    /// whole: a line is never mixed from both). With `follow` the sequence ends when the
    /// container stops; without, when the output so far has been read.
    ///
    /// Lines within one stream keep their order; how podman orders stdout against stderr
    /// lines is its own affair (it may give all of one, then the other). The request is made
    /// when iteration starts, in the iterating task.
    public func logs(_ id: String, follow: Bool, stdout: Bool = true, stderr: Bool = true) -> ContainerLogs {
        ContainerLogs(client: self, id: id, follow: follow, stdout: stdout, stderr: stderr)
    }

    /// Stops a running container: SIGTERM, then SIGKILL after `timeoutSeconds`. A container
    /// that is already stopped is not an error.
    public func stop(_ id: String, timeoutSeconds: Int) async throws {
        let operation = "stop container \(id)"
        let response = try await send(
            .POST, "/containers/\(escape(id))/stop", query: [("t", String(max(0, timeoutSeconds)))],
            operation: operation, timeout: .seconds(Int64(max(0, timeoutSeconds)) + 60))
        _ = try await expect(response, [204, 304], operation)
    }

    /// Removes a container with its anonymous volumes; `force` kills it first if it runs.
    /// A container that does not exist is not an error.
    public func remove(_ id: String, force: Bool) async throws {
        let operation = "remove container \(id)"
        let response = try await send(
            .DELETE, "/containers/\(escape(id))", query: [("force", force ? "true" : "false"), ("v", "true")],
            operation: operation, timeout: .seconds(120))
        _ = try await expect(response, [200, 204, 404], operation)
    }

    /// The containers (running or not) carrying all of `labels`.
    public func containers(labeled labels: [String: String]) async throws -> [ContainerSummary] {
        let operation = "list containers"
        let filters = try JSONEncoder().encode(["label": labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }])
        let response = try await send(.GET, "/containers/json", query: [("all", "true"), ("filters", String(decoding: filters, as: UTF8.self))], operation: operation)
        let data = try await expect(response, [200], operation)
        do {
            return try JSONDecoder().decode([ContainerSummary].self, from: data)
        } catch {
            throw DockerError(operation, 200, "unexpected answer: \(String(decoding: data.prefix(300), as: UTF8.self))")
        }
    }

    /// A container's state: whether it runs, its exit code and the engine's error, if any.
    public func state(of id: String) async throws -> ContainerState {
        let operation = "inspect container \(id)"
        let response = try await send(.GET, "/containers/\(escape(id))/json", operation: operation)
        let data = try await expect(response, [200], operation)
        struct Inspected: Decodable { let State: ContainerState }
        do {
            return try JSONDecoder().decode(Inspected.self, from: data).State
        } catch {
            throw DockerError(operation, 200, "unexpected answer: \(String(decoding: data.prefix(300), as: UTF8.self))")
        }
    }
}
