import Foundation
import HTTPTypes
import Hummingbird
import KilnCore
import Logging
import Sealing

/// `POST /agent/v1/builds/{build}/secrets`: what one build needs of the sealed secrets (its
/// git credential, registry logins, build secrets), given to the agent that holds the build.
/// Agents never hold the secrets key and cannot read `/kiln/secrets/`; this is their one way
/// to a secret, one build at a time.
///
/// The checks, in order:
/// 1. HTTP Basic `agentID:machineToken` (the agent's `--registry-credentials` file) must be a
///    machine of kind `agent` (`/kiln/machines/{agent}`), else 401.
/// 2. The dispatcher's grant `/kiln/grants/{agent}/{build}` must exist (written by a scheduler
///    in the assignment's transaction; an agent may write its own task keys, so a task alone
///    proves nothing), else 403.
/// 3. The build's project (from its record) must be the repository the grant names: an agent
///    can rewrite its build's record, not the grant, so a record pointed at another project
///    gets 403.
/// 4. Secrets for protected refs only go to a build of a protected ref
///    (`Project.isProtected(ref:)`) — the ref in the grant, which the agent cannot rewrite;
///    otherwise their names are in `withheld`.
/// The answer is `BuildSecrets` (`Cache-Control: no-store`); the log says which names went out,
/// never a value.
struct AgentSecrets: Sendable {
    let store: SchedulerStore
    let secrets: SchedulerSecrets
    let logger: Logger

    static let refusal = "the agent's credentials are wrong: send HTTP Basic with the agent's id and its machine token (its --registry-credentials file, made by `kiln machine add ID --kind agent`)"

    func addRoutes(to router: Router<KilnRequestContext>) {
        router.post("agent/v1/builds/:build/secrets") { request, context in
            try await handle(request, build: try context.parameters.require("build"))
        }
    }

    func handle(_ request: Request, build id: String) async throws -> Response {
        guard let credentials = BasicAuthorization.parse(request.headers[.authorization]),
              let machine = try await store.machine(credentials), machine.kind == .agent else {
            logger.notice("build secrets refused: wrong agent credentials", metadata: ["build.id": "\(Validation.printable(id))"])
            var response = errorResponse(401, Self.refusal)
            response.headers[.wwwAuthenticate] = "Basic realm=\"kiln agent\""
            return response
        }
        let agent = machine.name
        guard BuildID.isValid(id) else { throw KilnError.invalid("build id '\(Validation.printable(id))' is malformed") }
        let notHeld = KilnError.forbidden("agent \(agent) does not hold build \(id): secrets go only to the agent a scheduler assigned the build to, while it runs")
        guard let grant = try await store.etcd.get(store.keys.grant(agent: agent, build: id)) else {
            logger.notice("build secrets refused: no grant", metadata: ["agent.id": "\(agent)", "build.id": "\(id)"])
            throw notHeld
        }
        guard let build = try await notFoundAsNil({ try await store.build(id) }),
              let project = try await notFoundAsNil({ try await store.projectIfExists(build.project) })??.project,
              project.repositoryName == BuildGrant(value: grant.string).repository else {
            logger.warning("build secrets refused: the build's project is not the one granted", metadata: ["agent.id": "\(agent)", "build.id": "\(id)", "granted": "\(grant.string)"])
            throw notHeld
        }
        // A grant outlives its build while the agent keeps its task key (it may): an ended
        // build, or one now assigned to another agent, gets nothing more.
        guard !build.status.isFinal, build.agent == agent else {
            logger.notice("build secrets refused: the build has ended or is not this agent's", metadata: ["agent.id": "\(agent)", "build.id": "\(id)", "status": "\(build.status)"])
            throw notHeld
        }
        // The ref the dispatcher granted, not the record's (which the agent may rewrite); a grant
        // from before refs were granted counts as no protected ref.
        let grantedRef = BuildGrant(value: grant.string).ref
        let given = try await secrets.require(to: "give builds their secrets").buildSecrets(project: project, ref: grantedRef)
        logger.info("build secrets given", metadata: [
            "agent.id": "\(agent)", "build.id": "\(id)", "project": "\(project.name)", "ref": "\(grantedRef ?? "none (pinned commit or old grant)")",
            "env": "\(given.env.map(\.name).joined(separator: ","))", "registries": "\(given.registries.map(\.host).joined(separator: ","))",
            "git": "\(given.git.map { $0.summary } ?? "none")", "withheld": "\(given.withheld.joined(separator: ","))",
        ])
        var response = json(given)
        response.headers[.cacheControl] = "no-store"
        return response
    }
}
