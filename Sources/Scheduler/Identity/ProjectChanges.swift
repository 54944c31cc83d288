import Foundation
import KilnCore

/// Which settings of a project a save changed, for its activity line (names only: a setting's
/// value may be a secret, and the webhook secret is never shown).
enum ProjectChanges {
    static func describe(from old: Project?, to new: Project) -> String? {
        guard let old else { return nil }
        var changed: [String] = []
        func check<T: Equatable>(_ name: String, _ a: T, _ b: T) { if a != b { changed.append(name) } }
        check("repository", old.repository, new.repository)
        check("buildImage", old.buildImage, new.buildImage)
        check("buildCommand", old.buildCommand, new.buildCommand)
        check("dockerfile", old.dockerfile, new.dockerfile)
        check("context", old.context, new.context)
        check("defaultBranch", old.defaultBranch, new.defaultBranch)
        check("labels", old.labels, new.labels)
        check("supersede", old.supersede, new.supersede)
        check("maxConcurrent", old.maxConcurrent, new.maxConcurrent)
        check("branches", old.branches, new.branches)
        check("pipeline", old.pipeline, new.pipeline)
        check("protectedRefs", old.protectedRefs, new.protectedRefs)
        check("limits", old.limits, new.limits)
        check("group", old.group, new.group)
        check("retention", old.retention, new.retention)
        if new.webhookSecret != nil, new.webhookSecret != old.webhookSecret { changed.append("webhookSecret") }
        return changed.isEmpty ? "nothing changed" : changed.joined(separator: ", ")
    }
}
