import KilnCore

/// Which of the project's two cache folders a build mounts its caches from (`CacheLayout`:
/// `/root/.m2` is the folder itself, the project's other caches are folders in it).
///
/// A build can write anything into the cache it is given, and the next build that mounts it
/// runs what it finds there (a planted plugin jar). So builds of refs only trusted people push
/// (the default branch and `Project.protectedRefs`) get a cache of their own that no other
/// ref's build ever mounts; every other ref shares the project's second cache.
///
/// Rules, in order:
/// 1. A build that pins a commit gets the protected cache only if the commit is on its ref
///    (`commitOnRef`): otherwise `ref: main, commit: <a feature branch's commit>` would run
///    feature code with the main cache.
/// 2. A protected ref (`Project.isProtected(ref:)`) gets `protected/<project>`.
/// 3. Anything else gets `shared/<project>`.
/// The folder is relative to the agent's `mvncache` folder and is also the key of its lock.
enum MavenCachePlacement {
    struct Choice: Equatable, Sendable {
        let folder: String
        let protected: Bool
    }

    static func choose(project: Project, ref: String, pinnedCommit: Bool, commitOnRef: Bool) -> Choice {
        if isProtectedBuild(project: project, ref: ref, pinnedCommit: pinnedCommit, commitOnRef: commitOnRef) {
            return Choice(folder: "protected/\(project.name)", protected: true)
        }
        return Choice(folder: "shared/\(project.name)", protected: false)
    }

    /// Rules 1 and 2: the build counts as one of a protected ref (the protected cache, and
    /// the secrets for protected refs only: `CompileSecrets`).
    static func isProtectedBuild(project: Project, ref: String, pinnedCommit: Bool, commitOnRef: Bool) -> Bool {
        project.isProtected(ref: ref) && (!pinnedCommit || commitOnRef)
    }
}
