-- Argo CD health check for pruning.dev/PruneSchedule.
-- Refused spec (Accepted=False) -> Degraded, suspended -> Suspended,
-- not yet seen by the operator (or an older generation) -> Progressing, else Healthy.
local hs = {}
local status = obj.status
local generation = obj.metadata.generation
if status == nil or (generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation)) then
  hs.status = "Progressing"
  hs.message = "Waiting for the prune-operator to observe the PruneSchedule"
  return hs
end
if status.conditions ~= nil then
  for _, c in ipairs(status.conditions) do
    if c.type == "Accepted" and c.status == "False" then
      hs.status = "Degraded"
      hs.message = c.message or c.reason
      return hs
    end
  end
end
if obj.spec ~= nil and obj.spec.suspend == true then
  hs.status = "Suspended"
  hs.message = "Suspended"
  return hs
end
hs.status = "Healthy"
if status.nextScheduleTime ~= nil then
  hs.message = "Next run at " .. status.nextScheduleTime
else
  hs.message = "Scheduled"
end
return hs
