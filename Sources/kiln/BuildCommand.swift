import ArgumentParser
import Foundation
import KilnClient
import KilnCore
#if canImport(Glibc)
import Glibc
#endif

struct BuildCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "build",
        abstract: "Queue a build of a project.",
        discussion: """
        Without --ref the project's default branch is built; --commit builds that exact commit. \
        The image tag is --tag, else the commit's short sha. --follow prints the live log, and \
        the project's post-build pipeline (deploy, lb, …) after it, and exits 0 if the build and \
        its pipeline succeeded, 1 if the build failed, 3 if the build succeeded but its pipeline failed. \
        A build whose inputs (the commit's tree, build image, command, caches switch, …) equal an \
        earlier successful build's reuses that build's image (the new tag names the same digest, \
        nothing is compiled); --rebuild builds for real.

        Example: kiln build demo --ref main --tag v1.2.0 --no-mvncache --follow
        """)
    @OptionGroup var api: APIOptions
    @Argument(help: "Project name.") var project: String
    @Option(name: .long, help: "Branch, tag or refs/… to build.") var ref: String?
    @Option(name: .long, help: "Exact commit to build (7 to 40 hex digits).") var commit: String?
    @Option(name: .long, help: "Image tag (default: the commit's short sha).") var tag: String?
    @Flag(name: .long, inversion: .prefixedNo, help: "Mount the project's caches (its caches setting; Maven's /root/.m2 by default) in the compile container.") var mvncache = true
    @Flag(name: .long, help: "Build for real even when an earlier successful build of the project had the same inputs (by default its image is tagged again, without a compile).") var rebuild = false
    @Flag(name: [.long, .short], help: "Follow the log until the build ends.") var follow = false
    @Option(name: .long, help: "Priority, -1000 to 1000: higher goes first; within one priority, projects take turns.") var priority: Int?

    func validate() throws {
        if let priority, !(-1000...1000).contains(priority) { throw ValidationError("--priority must be between -1000 and 1000") }
        do {
            try Validation.projectName(project)
            if let ref { try Validation.ref(ref) }
            if let commit { try Validation.commit(commit) }
            if let tag { try Validation.tag(tag) }
        } catch { throw ValidationError("\(error)") }
    }

    func run() async throws {
        let client = try api.client()
        let build = try await client.post("/api/v1/projects/\(project)/builds",
                                          body: BuildRequest(ref: ref, commit: commit, tag: tag, mvncache: mvncache, trigger: "cli", priority: priority,
                                                              rebuild: rebuild ? true : nil), as: Build.self)
        if !follow {
            if api.json { Show.printJSON(build) } else { print("queued build \(build.id) of \(project) (ref \(build.ref)); follow it with: kiln logs \(build.id) -f") }
            return
        }
        print("queued build \(build.id) of \(project) (ref \(build.ref))")
        let progress = ProgressLine(interactive: isatty(STDOUT_FILENO) == 1)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                try await client.followLog(build.id) { progress.write($0) }
            }
            group.addTask {
                // The running step and how long it has run, read once a second.
                while true {
                    try await Task.sleep(for: .seconds(1))
                    if let b = try? await client.get("/api/v1/builds/\(build.id)", as: Build.self) { progress.show(b) }
                }
            }
            try await group.next()
            group.cancelAll()
        }
        progress.clear()
        let done = try await client.get("/api/v1/builds/\(build.id)", as: Build.self)
        print(Show.summary(done))
        if done.status != .succeeded { throw ExitCode(1) }
        if done.deploy?.status == .failed { throw ExitCode(3) }
    }
}
