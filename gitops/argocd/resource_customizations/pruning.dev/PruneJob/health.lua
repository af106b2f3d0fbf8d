-- Argo CD health check for pruning.dev/PruneJob.
-- Succeeded -> Healthy (Degraded when the quality gate, condition QualityMet, is False;
-- the checkpoint is kept either way), Failed -> Degraded, Pending/Running -> Progressing,
-- Suspended -> Suspended; a status the controller wrote for an older
-- generation (or no status yet) -> Progressing.
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

local function progress_message(status)
  local p = status.progress
  if p == nil then
    return "Running"
  end
  local text = "Running: " .. tostring(p.stage or "started")
  if p.blocksTotal ~= nil and p.blocksTotal > 0 then
    text = text .. " (" .. tostring(p.blocksDone or 0) .. "/" .. tostring(p.blocksTotal) .. " blocks)"
  end
  return text
end

local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the prune-operator to accept the PruneJob"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the prune-operator to observe generation " .. tostring(generation)
  return hs
end

local phase = status.phase
local gate = condition(status, "QualityMet")
if phase == "Succeeded" and gate ~= nil and gate.status == "False" then
  hs.status = "Degraded"
  hs.message = "Quality gate failed: " .. tostring(gate.message or gate.reason)
elseif phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = "Pruned"
  local r = status.results
  if r ~= nil and r.perplexity ~= nil and r.perplexity.increasePercent ~= nil then
    hs.message = "Pruned; perplexity +" .. string.format("%.1f", r.perplexity.increasePercent) .. "%"
  end
elseif phase == "Failed" then
  hs.status = "Degraded"
  local c = condition(status, "Failed") or condition(status, "Accepted")
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    hs.message = c.message
  elseif c ~= nil and c.reason ~= nil then
    hs.message = c.reason
  else
    hs.message = "Failed"
  end
elseif phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = "Suspended (spec.runPolicy.suspend or a queue)"
elseif phase == "Running" then
  hs.status = "Progressing"
  hs.message = progress_message(status)
elseif phase == "Pending" then
  hs.status = "Progressing"
  hs.message = "Pending"
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. tostring(phase)
end
return hs
