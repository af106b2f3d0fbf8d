-- Argo CD health check for pruning.dev/PruneSweep.
-- Complete with a best child -> Healthy (Degraded if its report Job failed:
-- ReportWritten False, reason ReportFailed); Complete with no child within the limits, every child
-- failed, or a refused spec -> Degraded; otherwise
-- (children running, or a status for an older generation) -> Progressing.
local hs = {}

local function condition(status, kind)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local status = obj.status
local accepted = status and condition(status, "Accepted")
if accepted == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the prune-operator to accept the PruneSweep"
  return hs
end
if accepted.status == "False" then
  hs.status = "Degraded"
  hs.message = tostring(accepted.message or accepted.reason)
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the prune-operator to observe generation " .. tostring(generation)
  return hs
end

local complete = condition(status, "Complete")
local failed = condition(status, "Failed")
if failed ~= nil and failed.status == "True" then
  hs.status = "Degraded"
  hs.message = tostring(failed.message or failed.reason)
elseif complete ~= nil and complete.status == "True" then
  local best = status.best
  local report = condition(status, "ReportWritten")
  if report ~= nil and report.reason == "ReportFailed" then
    hs.status = "Degraded"
    hs.message = "Report not written: " .. tostring(report.message or report.reason)
  elseif best ~= nil and best.child ~= nil then
    hs.status = "Healthy"
    hs.message = "Best: " .. best.child .. " (" .. tostring(best.why) .. ")"
  else
    hs.status = "Degraded"
    hs.message = (best and best.why) or "no best child"
  end
else
  hs.status = "Progressing"
  hs.message = tostring(status.done or "0/0") .. " children finished"
end
return hs
