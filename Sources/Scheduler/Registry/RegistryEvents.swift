import Foundation
import Hummingbird
import KilnCore
import Logging

/// `POST /hooks/registry`: the registry's notifications (Docker Distribution's `notifications`
/// endpoint), so a push or a delete of an image lands in the activity of its project (or of
/// its group, for a repository no project owns), with who did it (the token's subject).
///
/// The registry sends `Authorization: Bearer TOKEN` with the token both are given
/// (`kiln scheduler --registry-events-token-file`); anything else is refused. Only manifest
/// events count (a tag pushed or deleted); layer uploads and pulls are ignored here and, by
/// the registry's configuration, not even sent.
struct RegistryEvents: Sendable {
    let store: SchedulerStore
    let token: String
    let logger: Logger

    struct Envelope: Decodable {
        struct Event: Decodable {
            struct Target: Decodable {
                var mediaType: String?
                var repository: String?
                var digest: String?
                var tag: String?
            }
            struct Actor: Decodable { var name: String? }
            var action: String?
            var target: Target?
            var actor: Actor?
            var timestamp: Date?
        }
        var events: [Event]
    }

    func addRoutes(to router: Router<KilnRequestContext>) {
        router.post("hooks/registry") { request, _ in
            let header = request.headers[.authorization] ?? ""
            guard header.hasPrefix("Bearer "), Secret.equal(String(header.dropFirst(7)), token) else {
                throw KilnError.unauthorized("the registry's events need its token")
            }
            var request = request
            let body = try await request.collectBody(upTo: 4 << 20)
            guard let envelope = try? KilnJSON.decoder().decode(Envelope.self, from: Data(buffer: body)) else {
                throw KilnError.invalid("not a registry event envelope")
            }
            var recorded = 0
            for event in envelope.events {
                guard let action = event.action, action == "push" || action == "delete",
                      let repository = event.target?.repository, let resource = try await owner(of: repository) else { continue }
                if action == "push", event.target?.mediaType.map(Self.isManifest) == false { continue }
                let what = "\(repository)\(event.target?.tag.map { ":\($0)" } ?? "")\(event.target?.digest.map { "@\($0)" } ?? "")"
                try await store.record(ActivityEvent(at: event.timestamp ?? Date(), user: event.actor?.name.flatMap { $0.isEmpty ? nil : $0 },
                                                     action: action == "push" ? "image pushed" : "image deleted", detail: what),
                                       on: resource.kind, resource.name)
                recorded += 1
            }
            return json(["recorded": recorded])
        }
    }

    static func isManifest(_ mediaType: String) -> Bool { mediaType.contains("manifest") || mediaType.contains("image.index") }

    /// The project whose repository this is (`NAME`, or `GROUP/NAME` for a project in that
    /// group), else its group; nil for neither.
    func owner(of repository: String) async throws -> (kind: ResourceKind, name: String)? {
        let parts = repository.split(separator: "/", maxSplits: 1).map(String.init)
        let projectName = parts.count == 2 ? parts[1] : parts[0]
        if (try? Validation.projectName(projectName)) != nil, let project = try await store.projectIfExists(projectName)?.project,
           project.repositoryName == repository {
            return (.project, project.name)
        }
        if parts.count == 2, try await notFoundAsNil({ try await store.group(parts[0]) }) != nil { return (.group, parts[0]) }
        return nil
    }
}
